import pytest

from computeagent import exception
from computeagent.db import api as db_api
from computeagent.db import migration


def test_schema_and_crud(tmp_path):
    db = db_api.Database("sqlite:///%s" % (tmp_path / "a.sqlite"))
    db.sync()
    assert migration.db_version(db.engine) == "0004"
    db.sync()  # idempotent
    v = dict(uuid="u1", name="n", host="h", state="BUILDING", task_state="spawning",
             power_state="NOSTATE", flavor={}, image={}, networks=[], meta={"a": "b"})
    db.instance_create(v)
    with pytest.raises(exception.InstanceExists):
        db.instance_create(v)
    with pytest.raises(exception.InstanceInvalidState):
        db.instance_update("u1", expected_task_state=[None], task_state="x")
    assert db.instance_update("u1", expected_task_state="spawning",
                              task_state=None)["task_state"] is None
    assert db.instance_get("u1")["metadata"] == {"a": "b"}
    db.instance_destroy("u1")
    with pytest.raises(exception.InstanceNotFound):
        db.instance_get("u1")
    m = dict(id="m1", instance_uuid="u1", kind="live", source="a", dest="b",
             status="queued", progress=0, data_total=0, data_processed=0,
             data_remaining=0, extra={})
    assert db.migration_create(m)["status"] == "queued"
    assert db.migration_create(m) is None  # idempotency key
