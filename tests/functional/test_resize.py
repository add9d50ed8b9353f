"""Resize and cold migration on the real stack, with confirm, revert, auto-confirm
and a crash matrix (SIGKILL of an agent at each step) that must end, without a
human, in one clear state with no orphan disks or domains."""
import time
import uuid as uuidlib

import pytest

from computeagent import exception
from computeagent.lab import guest
from tests.functional.conftest import (delete_everywhere, backing_chain, host_file_text, host_run,
                                       make_instance, normal_agent, virsh, wait_for,
                                       wait_state)

pytestmark = pytest.mark.realstack

A, B = "hosta", "hostb"
INSTANCES = "/var/lib/computeagent/instances"
BIG = {"name": "lab.big", "vcpus": 2, "memory_mb": 128, "root_gb": 2}


def console(lab, host, uuid):
    return lambda: host_file_text(lab, host, "%s/%s/console.log" % (INSTANCES, uuid))


def spawn(agent, ctxt, image, host=A, **kw):
    inst = make_instance(image, **kw)
    agent.spawn(ctxt, host, inst)
    wait_state(agent, ctxt, host, inst["uuid"], "ACTIVE")
    return inst


def get_mig(agent, ctxt, host, mid):
    try:
        return agent.get_migration(ctxt, host, mid, timeout=10)
    except exception.MigrationNotFound:
        return None


def wait_mig(agent, ctxt, host, mid, statuses, timeout=180):
    return wait_for(lambda: (lambda m: m if m and m["status"] in statuses else None)(
        get_mig(agent, ctxt, host, mid)), timeout=timeout,
        what="migration %s in %s" % (mid, statuses))


def resize(agent, ctxt, uuid, dest, flavor, src=A):
    mid = "rz-" + uuidlib.uuid4().hex[:10]
    agent.resize(ctxt, src, uuid, dest, flavor, mid)
    return mid


def host_view(lab, host, uuid):
    entries = host_run(lab, host, ["ls", INSTANCES]).split()
    return {"dirs": sorted(e for e in entries if e.startswith(uuid)),
            "defined": ("instance-" + uuid) in virsh(lab, host, "list", "--all",
                                                     "--name").split(),
            "running": ("instance-" + uuid) in virsh(lab, host, "list",
                                                     "--name").split()}


def assert_clean(lab, uuid, owner, aside_on=None):
    """The guest exists (defined and running) on ``owner`` only; no other disk or
    domain of it anywhere, except the source's set-aside copy while waiting for
    confirm."""
    for host in (A, B):
        v = host_view(lab, host, uuid)
        want_dirs = []
        if host == owner:
            want_dirs.append(uuid)
        if host == aside_on:
            want_dirs.append(uuid + "_resize")
        assert v["dirs"] == sorted(want_dirs), (host, v)
        assert v["defined"] == (host == owner), (host, v)
        assert v["running"] == (host == owner), (host, v)


def cleanup(agent, ctxt, uuid):
    delete_everywhere(agent, ctxt, uuid)


def test_cold_migrate_same_flavor_moves_only_the_overlay(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    try:
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        mid = resize(agent, ctxt, uuid, B, inst["flavor"])
        mig = wait_mig(agent, ctxt, A, mid, ("verify-resize", "failed"))
        assert mig["status"] == "verify-resize", mig
        got = wait_state(agent, ctxt, B, uuid, "RESIZE_VERIFY")
        assert got["flavor"] == inst["flavor"]
        # only the overlay crossed: far less than the 64 MiB base
        assert 0 < mig["data_total"] < guest_image["size"] // 4, mig
        chain = backing_chain(lab, B, "%s/%s/disk" % (INSTANCES, uuid))
        assert len(chain) == 2 and chain[0]["backing-filename-format"] == "raw"
        assert chain[0]["full-backing-filename"] == got["disk"]["backing_file"]
        assert guest.wait_for_check(console(lab, B, uuid), timeout=90).ok
        assert_clean(lab, uuid, B, aside_on=A)
        agent.confirm_resize(ctxt, B, uuid, mid)
        wait_mig(agent, ctxt, B, mid, ("confirmed",))
        assert wait_state(agent, ctxt, B, uuid, "ACTIVE")["power_state"] == "RUNNING"
        assert wait_mig(agent, ctxt, A, mid, ("confirmed",))
        assert_clean(lab, uuid, B)
    finally:
        cleanup(agent, ctxt, uuid)


def test_resize_up_across_hosts_guest_sees_new_hardware(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    try:
        mid = resize(agent, ctxt, uuid, B, BIG)
        assert wait_mig(agent, ctxt, A, mid, ("verify-resize", "failed"))[
            "status"] == "verify-resize"
        got = wait_state(agent, ctxt, B, uuid, "RESIZE_VERIFY")
        assert got["flavor"] == BIG
        assert got["disk"]["virtual_size"] == 2 * 1024 ** 3
        check = guest.wait_for_check(console(lab, B, uuid), timeout=90)
        assert check.ok, check
        info = guest.parse_info(console(lab, B, uuid)())
        assert info["cpus"] == 2 and info["disk_bytes"] == 2 * 1024 ** 3, info
        # MemTotal of a 96 MiB guest is ~60 MiB; of a 128 MiB one ~92 MiB
        assert info["mem_kb"] > 80 * 1024, info
        agent.confirm_resize(ctxt, B, uuid, mid)
        wait_mig(agent, ctxt, B, mid, ("confirmed",))
        assert_clean(lab, uuid, B)
    finally:
        cleanup(agent, ctxt, uuid)


def test_same_host_resize_then_confirm(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    try:
        mid = resize(agent, ctxt, uuid, A, BIG)
        assert wait_mig(agent, ctxt, A, mid, ("verify-resize", "failed"))[
            "status"] == "verify-resize"
        got = wait_state(agent, ctxt, A, uuid, "RESIZE_VERIFY")
        assert got["flavor"] == BIG
        assert guest.wait_for_check(console(lab, A, uuid), timeout=90).ok
        assert guest.parse_info(console(lab, A, uuid)())["cpus"] == 2
        agent.confirm_resize(ctxt, A, uuid, mid)
        wait_mig(agent, ctxt, A, mid, ("confirmed",))
        wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert_clean(lab, uuid, A)
    finally:
        cleanup(agent, ctxt, uuid)


def test_revert_brings_guest_back_with_old_flavor_and_data(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    try:
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        virsh(lab, A, "qemu-monitor-command", "--hmp", "instance-" + uuid,
              'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend '
              '"write -P 0x42 300M 256k"')
        mid = resize(agent, ctxt, uuid, B, BIG)
        assert wait_mig(agent, ctxt, A, mid, ("verify-resize", "failed"))[
            "status"] == "verify-resize"
        wait_state(agent, ctxt, B, uuid, "RESIZE_VERIFY")
        agent.revert_resize(ctxt, B, uuid, mid)
        wait_mig(agent, ctxt, B, mid, ("reverted",))
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["flavor"] == inst["flavor"]
        assert got["disk"]["virtual_size"] == 1024 ** 3
        out = host_run(lab, A, ["qemu-io", "-r", "-U", "-f", "qcow2",
                                "%s/%s/disk" % (INSTANCES, uuid), "-c",
                                "read -P 0x42 300M 256k"])
        assert "Pattern verification failed" not in out and "read 262144" in out
        assert guest.wait_for_check(console(lab, A, uuid), timeout=90).ok
        assert_clean(lab, uuid, A)
        with pytest.raises(exception.InstanceNotFound):
            agent.get_instance(ctxt, B, uuid)
    finally:
        cleanup(agent, ctxt, uuid)


def test_auto_confirm_after_window(lab, agent, ctxt, guest_image):
    lab.stop_agent(B)
    lab.start_agent(B, extra_conf={"migration": {"resize_confirm_window": "3"}})
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    try:
        mid = resize(agent, ctxt, uuid, B, inst["flavor"])
        wait_mig(agent, ctxt, A, mid, ("verify-resize",))
        wait_mig(agent, ctxt, B, mid, ("confirmed",), timeout=60)
        wait_state(agent, ctxt, B, uuid, "ACTIVE")
        assert_clean(lab, uuid, B)
    finally:
        lab.stop_agent(B)
        lab.start_agent(B, extra_conf={})
        cleanup(agent, ctxt, uuid)


def test_shrink_refused_before_anything_is_touched(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image, root_gb=2)
    uuid = inst["uuid"]
    try:
        mid = resize(agent, ctxt, uuid, B, dict(inst["flavor"], root_gb=1))
        mig = wait_mig(agent, ctxt, A, mid, ("failed",))
        assert "shrinking" in mig["error"]
        got = agent.get_instance(ctxt, A, uuid)
        assert got["state"] == "ACTIVE" and got["task_state"] is None
        assert_clean(lab, uuid, A)
    finally:
        cleanup(agent, ctxt, uuid)


def test_destination_down_fails_and_guest_runs_on_source(lab, agent, ctxt, guest_image):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    lab.stop_agent(B)
    try:
        mid = resize(agent, ctxt, uuid, B, BIG)
        mig = wait_mig(agent, ctxt, A, mid, ("failed",), timeout=120)
        assert "hostb" in mig["error"]
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["flavor"] == inst["flavor"] and got["power_state"] == "RUNNING"
    finally:
        lab.start_agent(B)
    time.sleep(2)      # B handles whatever waited in its queue
    assert_clean(lab, uuid, A)
    cleanup(agent, ctxt, uuid)


# -- crash matrix ------------------------------------------------------------
# (point, agent that dies, what the resize does after the flow starts,
#  expected end: "rolled-back" (ACTIVE on A, old flavor) or a finished state)
CRASHES = [
    ("source:after-power-off", A, None, "rolled-back"),
    ("source:during-copy", A, None, "rolled-back"),
    ("source:after-copy", A, None, "rolled-back"),
    ("dest:before-start", B, None, "rolled-back"),
    ("dest:after-start", B, None, "rolled-back"),
    ("dest:during-confirm", B, "confirm", "confirmed"),
    ("source:during-confirm", A, "confirm", "confirmed"),
    ("dest:during-revert", B, "revert", "reverted"),
    ("source:during-revert", A, "revert", "reverted"),
]


@pytest.mark.parametrize("point,victim,then,expected", CRASHES,
                         ids=[c[0] for c in CRASHES])
def test_crash_matrix(lab, agent, ctxt, guest_image, point, victim, then, expected):
    inst = spawn(agent, ctxt, guest_image)
    uuid = inst["uuid"]
    # armed by SIGHUP ([debug] crash_at is mutable): no restart before the case
    lab.reconfigure_agent(victim, {"debug": {"crash_at": point}})
    try:
        mid = resize(agent, ctxt, uuid, B, BIG)
        if then:
            wait_mig(agent, ctxt, A, mid, ("verify-resize",))
            wait_state(agent, ctxt, B, uuid, "RESIZE_VERIFY")
            (agent.confirm_resize if then == "confirm" else agent.revert_resize)(
                ctxt, B, uuid, mid)
        wait_for(lambda: lab.agent_pid(victim) is None, timeout=120,
                 what="agent %s killed at %s" % (victim, point))
        lab.start_agent(victim, extra_conf={})
        if expected == "rolled-back":
            wait_mig(agent, ctxt, A, mid, ("failed",), timeout=120)
            got = wait_state(agent, ctxt, A, uuid, "ACTIVE", timeout=60)
            assert got["flavor"] == inst["flavor"], got
            assert got["power_state"] == "RUNNING"
            owner = A
        elif expected == "confirmed":
            wait_mig(agent, ctxt, B, mid, ("confirmed",), timeout=120)
            wait_mig(agent, ctxt, A, mid, ("confirmed",), timeout=60)
            got = wait_state(agent, ctxt, B, uuid, "ACTIVE", timeout=60)
            assert got["flavor"] == BIG
            owner = B
        else:
            wait_mig(agent, ctxt, B, mid, ("reverted",), timeout=120)
            got = wait_state(agent, ctxt, A, uuid, "ACTIVE", timeout=60)
            assert got["flavor"] == inst["flavor"]
            owner = A
        time.sleep(1)
        assert_clean(lab, uuid, owner)
        assert guest.wait_for_check(console(lab, owner, uuid), timeout=90).ok
    finally:
        normal_agent(lab, victim)
        cleanup(agent, ctxt, uuid)
