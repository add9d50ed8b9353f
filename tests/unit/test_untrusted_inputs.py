"""Issue 9: request ids, URL credentials and file modes (no libvirt, no lab)."""
import os
import stat
import types

import pytest

from computeagent import context
from computeagent import utils
from computeagent.compute import live_migration
from computeagent.db import api as db_api
from computeagent.virt import config
from computeagent.virt import driver as vdriver

UUID = "0b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a"


@pytest.mark.parametrize("rid", ["req-1", "req-" + "a" * 60,
                                 "req-0b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a", "a.b:c_d"])
def test_safe_request_ids_kept(rid):
    assert context.from_rpc({"request_id": rid}).request_id == rid


@pytest.mark.parametrize("rid", ["req-1\nINFO forged log line", "", "x" * 65,
                                 "<script>", "req 1", "-lead", "req-\x1b[31m", 7, None])
def test_unsafe_request_ids_replaced(rid):
    got = context.from_rpc({"request_id": rid}).request_id
    assert got != rid and got.startswith("req-")
    assert context.REQUEST_ID_RE.match(got)


def test_redact_urls():
    assert utils.redact_urls("fetch https://alice:s3cret@img.example/x.raw failed") == \
        "fetch https://***@img.example/x.raw failed"
    assert utils.redact_urls("http://img.example/a@b") == "http://img.example/a@b"
    assert utils.redact_urls(None) is None


def test_domain_xml_carries_no_url_credentials():
    inst = {"uuid": UUID, "name": "vm",
            "flavor": {"name": "m", "vcpus": 1, "memory_mb": 96, "root_gb": 1},
            "image": {"id": "i", "url": "https://alice:s3cret@img.example/x.raw"},
            "networks": [], "metadata": {}}
    xml = config.build_domain_xml(inst, "/i/disk", virt_type="qemu")
    assert "s3cret" not in xml and "alice" not in xml
    assert config.parse_domain(xml)["instance"]["image"]["url"] == \
        "https://***@img.example/x.raw"


def test_migration_view_error_redacted():
    m = {"id": "m", "instance_uuid": UUID, "kind": "live", "source": "a", "dest": "b",
         "status": "failed", "progress": 0, "data_total": 0, "data_processed": 0,
         "data_remaining": 0, "downtime_ms": None, "started_at": None,
         "finished_at": None,
         "error": "base download from http://u:pw@img/x failed", "extra": {}}
    assert "pw" not in live_migration.migration_view(m)["error"]


def test_instance_dir_0700_and_db_0600(tmp_path):
    from oslo_config import cfg
    from computeagent.conf import migration as migration_conf
    opts = cfg.ConfigOpts()
    migration_conf.register_opts(opts)
    opts([], default_config_files=[])
    conf = types.SimpleNamespace(instances_path=str(tmp_path / "instances"),
                                 migration=opts.migration)
    d = vdriver.LibvirtDriver(conf, None).make_instance_dir(UUID)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    path = tmp_path / "state" / "computeagent.db"
    db = db_api.Database("sqlite:///%s" % path)
    db.sync()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
