"""The whole agent in one process on fakes: oslo.messaging ``fake://`` and
libvirt's ``test:///default``, with real qemu-img and a real SQLite file.
Fast checks of the RPC edge and the flows; the real stack is in tests/functional."""
import hashlib
import time
import uuid as uuidlib

import pytest

from computeagent import exception
from computeagent.conf import CONF


@pytest.fixture
def agent_env(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    raw = images / "base.raw"
    raw.write_bytes(b"\x00" * (1 << 20))
    overrides = [
        ("host", "fakehost", None), ("instances_path", str(tmp_path / "inst"), None),
        ("state_path", str(tmp_path / "state"), None),
        ("lock_path", str(tmp_path / "locks"), None),
        ("transport_url", "fake:/", None),
        ("sync_power_state_interval", 1, None),
        ("image_cache_manager_interval", 0, None),
        ("connection", "sqlite:///%s" % (tmp_path / "db.sqlite"), "database"),
        ("connection_uri", "test:///default", "libvirt"),
        ("virt_type", "qemu", "libvirt"),
        ("shutdown_timeout", 0, "libvirt"),
        ("allowed_bridges", ["br-lab"], "network"),
        ("allowed_file_dirs", [str(images)], "image_cache"),
    ]
    CONF([], project="computeagent", default_config_files=[])
    from computeagent import service
    from computeagent.rpc import api
    transport = api.get_transport(CONF, url="fake:/")   # registers transport_url
    for name, value, group in overrides:
        CONF.set_override(name, value, group)
    svc = service.AgentService(CONF, transport=transport)
    svc.start()
    client = api.ComputeAgentAPI(transport, timeout=10)
    image = {"id": "img-" + uuidlib.uuid4().hex[:8], "url": "file://%s" % raw,
             "disk_format": "raw", "size": raw.stat().st_size, "hash_algo": "sha256",
             "hash": hashlib.sha256(raw.read_bytes()).hexdigest()}
    try:
        yield svc, client, image, tmp_path
    finally:
        for inst in svc.manager.db.instance_get_all():
            try:
                svc.manager.driver.destroy(inst["uuid"])
            except Exception:
                pass
        svc.stop()
        for name, _v, group in overrides:
            CONF.clear_override(name, group)


def wait(fn, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = fn()
        if r:
            return r
        time.sleep(0.05)
    raise AssertionError("timeout")


def inst_payload(image, **kw):
    d = {"uuid": str(uuidlib.uuid4()), "name": "vm",
         "flavor": {"name": "f", "vcpus": 1, "memory_mb": 64, "root_gb": 1},
         "image": image,
         "networks": [{"id": "n1", "bridge": "br-lab", "mac": "52:54:00:00:00:09",
                       "fixed_ips": ["10.0.0.2", "10.0.0.3"]}],
         "metadata": {}}
    d.update(kw)
    return d


def state_of(client, uuid):
    try:
        return client.get_instance({}, "fakehost", uuid)
    except exception.InstanceNotFound:
        return None


def test_spawn_stop_start_delete(agent_env):
    svc, client, image, tmp = agent_env
    inst = inst_payload(image)
    client.spawn({"request_id": "req-abc"}, "fakehost", inst)
    got = wait(lambda: (lambda i: i if i and i["state"] == "ACTIVE" else None)(
        state_of(client, inst["uuid"])))
    assert got["disk"]["backing_file"].startswith(str(tmp / "inst" / "_base"))
    assert got["disk"]["virtual_size"] == 1024 ** 3
    client.stop({}, "fakehost", inst["uuid"])
    wait(lambda: state_of(client, inst["uuid"])["state"] == "STOPPED")
    client.start({}, "fakehost", inst["uuid"])
    wait(lambda: state_of(client, inst["uuid"])["state"] == "ACTIVE")
    client.delete({}, "fakehost", inst["uuid"])
    wait(lambda: state_of(client, inst["uuid"]) is None)
    assert not (tmp / "inst" / inst["uuid"]).exists()
    assert list((tmp / "inst" / "_base").iterdir())      # base stays for aging
    events = [e for e, _ in svc.manager.notifier.sent]
    assert "instance.create.end" in events and "instance.delete.end" in events


def test_invalid_spawn_goes_to_error_and_agent_keeps_serving(agent_env):
    svc, client, image, tmp = agent_env
    inst = inst_payload(image)
    inst["networks"][0]["mac"] = "zz"
    client.spawn({}, "fakehost", inst)
    got = wait(lambda: state_of(client, inst["uuid"]))
    assert got["state"] == "ERROR" and "mac" in got["fault"]
    client.spawn({}, "fakehost", {"uuid": "../../x", "name": 1})
    client.spawn({}, "fakehost", "not even a dict")
    assert client.get_host_status({}, "fakehost")["host"] == "fakehost"
    assert not (tmp / "inst" / inst["uuid"]).exists()
    # casts are asynchronous: wait for the three error notifications
    wait(lambda: len([e for e, _ in svc.manager.notifier.sent
                      if e.endswith(".error")]) >= 3)


def test_duplicate_spawn_is_ignored(agent_env):
    svc, client, image, tmp = agent_env
    inst = inst_payload(image)
    for _ in range(3):
        client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    creates = [e for e, p in svc.manager.notifier.sent
               if e == "instance.create.start" and p["instance_uuid"] == inst["uuid"]]
    assert len(creates) == 1


def test_unknown_uuid_and_bad_arguments(agent_env):
    svc, client, image, tmp = agent_env
    with pytest.raises(exception.InstanceNotFound):
        client.get_instance({}, "fakehost", str(uuidlib.uuid4()))
    with pytest.raises(exception.InvalidInput):
        client.get_instance({}, "fakehost", "../etc/passwd")
    with pytest.raises(exception.MigrationNotFound):
        client.get_migration({}, "fakehost", "nope")


def test_records_rebuilt_from_domain_metadata(agent_env):
    svc, client, image, tmp = agent_env
    inst = inst_payload(image, name="rebuild-me")
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    svc.manager.db.instance_destroy(inst["uuid"])      # the DB lost it
    svc.manager.init_host()
    got = state_of(client, inst["uuid"])
    assert got["name"] == "rebuild-me" and got["state"] == "ACTIVE"
    assert got["networks"][0]["fixed_ips"] == ["10.0.0.2", "10.0.0.3"]


def _mig(client, mid):
    try:
        return client.get_migration({}, "fakehost", mid)
    except exception.MigrationNotFound:
        return None


def _resized(svc, client, image, tmp, flavor):
    inst = inst_payload(image)
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    mid = "rz-" + uuidlib.uuid4().hex[:8]
    client.resize({}, "fakehost", inst["uuid"], "fakehost", flavor, mid)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "RESIZE_VERIFY")
    return inst, mid


def test_same_host_resize_confirm(agent_env):
    svc, client, image, tmp = agent_env
    flavor = {"name": "big", "vcpus": 2, "memory_mb": 128, "root_gb": 2}
    inst, mid = _resized(svc, client, image, tmp, flavor)
    got = state_of(client, inst["uuid"])
    assert got["flavor"] == flavor
    assert got["disk"]["virtual_size"] == 2 * 1024 ** 3
    assert (tmp / "inst" / (inst["uuid"] + "_resize")).is_dir()
    client.confirm_resize({}, "fakehost", inst["uuid"], mid)
    wait(lambda: _mig(client, mid)["status"] == "confirmed")
    assert state_of(client, inst["uuid"])["state"] == "ACTIVE"
    assert not (tmp / "inst" / (inst["uuid"] + "_resize")).exists()


def test_same_host_resize_revert(agent_env):
    svc, client, image, tmp = agent_env
    flavor = {"name": "big", "vcpus": 2, "memory_mb": 128, "root_gb": 3}
    inst, mid = _resized(svc, client, image, tmp, flavor)
    client.revert_resize({}, "fakehost", inst["uuid"], mid)
    wait(lambda: _mig(client, mid)["status"] == "reverted")
    got = state_of(client, inst["uuid"])
    assert got["state"] == "ACTIVE" and got["flavor"] == inst["flavor"]
    assert got["disk"]["virtual_size"] == 1024 ** 3
    assert not (tmp / "inst" / (inst["uuid"] + "_resize")).exists()


def test_shrink_refused_before_anything(agent_env):
    svc, client, image, tmp = agent_env
    inst = inst_payload(image)
    inst["flavor"]["root_gb"] = 2
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    client.resize({}, "fakehost", inst["uuid"], "fakehost",
                  {"name": "s", "vcpus": 1, "memory_mb": 64, "root_gb": 1}, "shrink-1")
    mig = wait(lambda: _mig(client, "shrink-1"))
    assert mig["status"] == "failed" and "shrinking" in mig["error"]
    got = state_of(client, inst["uuid"])
    assert got["state"] == "ACTIVE" and got["task_state"] is None
    assert got["disk"]["virtual_size"] == 2 * 1024 ** 3


FAIL_AT = {
    # step -> (object path on the service, attribute) that raises there
    "preparing": ("manager.image_cache", "ensure"),
    "powering-off": ("manager.driver", "power_off"),
    "copying": ("module:shutil", "copyfile"),
    "finishing-grow": ("module:qemu_img", "resize"),
    "finishing-start": ("manager.driver", "define_and_start"),
}


@pytest.mark.parametrize("step", sorted(FAIL_AT))
def test_same_host_resize_failure_path_at_every_step(agent_env, monkeypatch, step):
    """One failure path: whatever step fails, the resize ends failed/rolled-back and
    the guest is back, running, with its old flavor and disk; nothing set aside."""
    from computeagent.compute import resize as resize_mod
    svc, client, image, tmp = agent_env
    inst = inst_payload(image)
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    where, attr = FAIL_AT[step]
    if where.startswith("module:"):
        target = getattr(resize_mod, where.split(":", 1)[1])
    else:
        target = svc
        for part in where.split("."):
            target = getattr(target, part)

    def boom(*a, **kw):
        raise RuntimeError("injected failure at %s" % step)
    monkeypatch.setattr(target, attr, boom)
    mid = "rz-" + uuidlib.uuid4().hex[:8]
    client.resize({}, "fakehost", inst["uuid"], "fakehost",
                  {"name": "big", "vcpus": 2, "memory_mb": 128, "root_gb": 2}, mid)
    mig = wait(lambda: (lambda m: m if m and m["status"] in ("failed", "verify-resize")
                        else None)(_mig(client, mid)))
    assert mig["status"] == "failed" and mig["step"] == "rolled-back", mig
    assert "injected failure" in mig["error"]
    got = wait(lambda: (lambda i: i if i and i["task_state"] is None else None)(
        state_of(client, inst["uuid"])))
    assert got["state"] == "ACTIVE" and got["flavor"] == inst["flavor"], got
    assert got["power_state"] == "RUNNING"
    assert got["disk"]["virtual_size"] == 1024 ** 3
    assert not (tmp / "inst" / (inst["uuid"] + "_resize")).exists()


def test_confirm_that_fails_is_resumed_not_lost(agent_env, monkeypatch):
    """A confirm whose clean-up fails stays ``confirming`` with the error recorded
    (never half-confirmed, never reverted behind it) and the periodic task finishes
    it once the fault is gone."""
    from computeagent.compute import resize as resize_mod
    svc, client, image, tmp = agent_env
    inst, mid = _resized(svc, client, image, tmp,
                         {"name": "big", "vcpus": 1, "memory_mb": 64, "root_gb": 1})
    real = resize_mod.shutil.rmtree
    fails = {"n": 1}

    def flaky(path, *a, **kw):
        if path.endswith("_resize") and fails["n"]:
            fails["n"] -= 1
            raise OSError("injected: disk busy")
        return real(path, *a, **kw)
    monkeypatch.setattr(resize_mod.shutil, "rmtree", flaky)
    client.confirm_resize({}, "fakehost", inst["uuid"], mid)
    mig = wait(lambda: (lambda m: m if m and m["error"] else None)(_mig(client, mid)))
    assert mig["status"] == "confirming" and "disk busy" in mig["error"], mig
    client.revert_resize({}, "fakehost", inst["uuid"], mid)     # refused: confirming
    svc.manager.resize.auto_confirm()                            # the periodic task
    wait(lambda: _mig(client, mid)["status"] == "confirmed")
    assert state_of(client, inst["uuid"])["state"] == "ACTIVE"
    assert not (tmp / "inst" / (inst["uuid"] + "_resize")).exists()


def test_a_bug_deep_inside_is_not_called_a_malformed_message(agent_env, monkeypatch):
    """Only arguments that do not fit the method are "malformed"; a TypeError raised
    inside the agent is a fault reported as such."""
    svc, client, image, tmp = agent_env
    raw = client._prepare("fakehost", "1.0", 10)
    with pytest.raises(exception.InvalidInput, match="malformed message"):
        raw.call({}, "get_instance", instance_uuid=str(uuidlib.uuid4()), bogus=1)

    def buggy(ctx):
        return len(None)            # TypeError inside the agent
    monkeypatch.setattr(svc.manager, "get_host_status", buggy)
    # it reaches the caller as the TypeError it is (builtins pass through
    # oslo.messaging), not as InvalidInput("malformed message")
    with pytest.raises(TypeError, match="NoneType") as e:
        client.get_host_status({}, "fakehost")
    assert not isinstance(e.value, exception.InvalidInput)
