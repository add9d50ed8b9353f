"""Agent-to-agent calls are checked against the receiver's own record (RPC 1.3)."""
import pytest

from computeagent import exception
from computeagent.compute import peer
from computeagent.db import api

U = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-2222-3333-4444-555555555555"


@pytest.fixture
def db(tmp_path):
    d = api.Database("sqlite:///%s" % (tmp_path / "p.db"))
    d.sync()
    return d


def _mig(db, kind, status, source="hosta", dest="hostb", mid="m1"):
    from tests.unit.test_state_machines import _path_to
    path = _path_to(kind, status)
    db.migration_create({"id": mid, "instance_uuid": U, "kind": kind, "source": source,
                         "dest": dest, "status": path[0], "extra": {}})
    for s in path[1:]:
        db.migration_update(mid, status=s)


SRC = {"host": "hosta", "role": "source"}
DST = {"host": "hostb", "role": "dest"}


def test_accepts_the_expected_call(db):
    _mig(db, "resize", "finishing")      # the destination's own record, hostb
    assert peer.check(db, "hostb", "resize_rollback_at_dest", SRC, U, "m1")["id"] == "m1"


@pytest.mark.parametrize("kwargs,why", [
    ({"peer": None}, "no peer context"),
    ({"peer": {"host": "hosta", "role": "dest"}}, "may not call"),
    ({"peer": {"host": "hostc", "role": "source"}}, "the call came from hostc"),
    ({"peer": {"host": "hosta;rm", "role": "source"}}, "host"),
    ({"peer": {"host": "hosta", "role": "admin"}}, "unknown peer role"),
    ({"uuid": OTHER}, "is of instance"),
    ({"this_host": "hostc"}, "is hosta -> hostb here"),
])
def test_refusals(db, kwargs, why):
    _mig(db, "resize", "finishing")
    with pytest.raises((exception.PeerRefused, exception.InvalidInput)) as e:
        peer.check(db, kwargs.get("this_host", "hostb"), "resize_rollback_at_dest",
                   kwargs.get("peer", SRC), kwargs.get("uuid", U), "m1")
    assert why in str(e.value)


@pytest.mark.parametrize("status", ["confirming", "confirmed", "reverting", "reverted"])
def test_rollback_after_the_end_is_refused(db, status):
    _mig(db, "resize", status)
    with pytest.raises(exception.PeerRefused):
        peer.check(db, "hostb", "resize_rollback_at_dest", SRC, U, "m1")


def test_confirm_at_source_only_from_the_destination(db):
    _mig(db, "resize", "verify-resize")
    assert peer.check(db, "hosta", "confirm_resize_at_source", DST, U, "m1")
    with pytest.raises(exception.PeerRefused):
        peer.check(db, "hosta", "confirm_resize_at_source", SRC, U, "m1")


def test_preparation_creates_so_needs_no_record_and_a_matching_payload(db):
    payload = {"id": "new", "source": "hosta", "dest": "hostb"}
    assert peer.check(db, "hostb", "prep_resize", SRC, U, "new", payload) is None
    with pytest.raises(exception.PeerRefused):
        peer.check(db, "hostb", "prep_resize", SRC, U, "new",
                   dict(payload, source="hostc"))
    _mig(db, "resize", "failed", mid="new")           # a tombstone, or a replay
    with pytest.raises(exception.PeerRefused):
        peer.check(db, "hostb", "prep_resize", SRC, U, "new", payload)


@pytest.mark.parametrize("status,ok", [("running", True), ("completed", False),
                                       ("failed", False)])
def test_post_live_migration_only_while_running(db, status, ok):
    _mig(db, "live", status)
    if ok:
        assert peer.check(db, "hostb", "post_live_migration_at_destination", SRC, U, "m1")
    else:
        with pytest.raises(exception.PeerRefused):
            peer.check(db, "hostb", "post_live_migration_at_destination", SRC, U, "m1")


@pytest.mark.parametrize("method,status", [("confirm_resize_at_source", "confirmed"),
                                           ("finish_revert_resize", "reverted")])
def test_replay_after_the_end_is_refused_naming_the_status(db, method, status):
    _mig(db, "resize", status)
    with pytest.raises(exception.PeerRefused) as e:
        peer.check(db, "hosta", method, DST, U, "m1")
    assert e.value.kwargs["status"] == status
