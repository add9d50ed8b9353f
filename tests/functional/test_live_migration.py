"""Live block migration on the real stack: two libvirtd hosts, QEMU (TCG), a
real tiny Linux guest whose init checks every file of its base layer."""
import os
import time
import uuid as uuidlib

import pytest

from computeagent import exception
from computeagent.lab import guest
from tests.functional.conftest import (TCG_LIVE_MIGRATION, delete_everywhere, gone, backing_chain, host_file_text, host_run,
                                       make_instance, publish_image, virsh, wait_for,
                                       wait_state)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

A, B = "hosta", "hostb"
INSTANCES = "/var/lib/computeagent/instances"


def console(lab, host, uuid):
    return lambda: host_file_text(lab, host, "%s/%s/console.log" % (INSTANCES, uuid))


def hmp(lab, host, uuid, command):
    return virsh(lab, host, "qemu-monitor-command", "--hmp", "instance-" + uuid, command)


def write_pattern(lab, host, uuid, pattern, offset):
    """Write into the running guest's disk through its own QEMU (outside the
    guest's filesystem, which ends at 64 MiB)."""
    hmp(lab, host, uuid, 'qemu-io -d /machine/peripheral/virtio-disk0/virtio-backend '
        '"write -P %s %s 256k"' % (pattern, offset))


def read_pattern_ok(lab, host, uuid, pattern, offset):
    out = host_run(lab, host, ["qemu-io", "-r", "-U", "-f", "qcow2",
                               "%s/%s/disk" % (INSTANCES, uuid), "-c",
                               "read -P %s %s 256k" % (pattern, offset)], check=False)
    return "Pattern verification failed" not in out and "read 262144/262144" in out


def migrate(agent, ctxt, src, uuid, dest, mid=None, wait=True, timeout=180):
    mid = mid or "mig-" + uuidlib.uuid4().hex[:12]
    agent.live_migrate(ctxt, src, uuid, dest, mid)
    if not wait:
        return mid
    return wait_migration(agent, ctxt, src, mid, timeout)


def wait_migration(agent, ctxt, host, mid, timeout=180):
    return wait_for(lambda: (lambda m: m if m["status"] in (
        "completed", "failed", "cancelled") else None)(
        agent.get_migration(ctxt, host, mid)), timeout=timeout, what="migration end")


def spawn_on(agent, ctxt, host, image, **kw):
    inst = make_instance(image, **kw)
    agent.spawn(ctxt, host, inst)
    wait_state(agent, ctxt, host, inst["uuid"], "ACTIVE")
    return inst


def cleanup(agent, ctxt, uuid):
    delete_everywhere(agent, ctxt, uuid)


def guest_image_size(lab, fname):
    return os.path.getsize(os.path.join(lab.image_dir, fname))


def fresh_image(lab, guest_artifacts, tag):
    return publish_image(lab, guest_artifacts.base_raw,
                         "lm-%s-%s.raw" % (tag, uuidlib.uuid4().hex[:8]), "raw")


def test_a_to_b_to_a_to_b_precaches_base_and_keeps_data(lab, agent, ctxt,
                                                          guest_artifacts):
    img = fresh_image(lab, guest_artifacts, "abab")
    fname = os.path.basename(img["url"])
    inst = spawn_on(agent, ctxt, A, img)
    uuid = inst["uuid"]
    try:
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        write_pattern(lab, A, uuid, "0x77", "100M")
        lab.reset_image_stats()

        # A -> B, base absent on B: exactly one GET, from B; data written during
        # the migration arrives too
        mid = migrate(agent, ctxt, A, uuid, B, wait=False)
        write_pattern(lab, A, uuid, "0x55", "200M")
        mig = wait_migration(agent, ctxt, A, mid)
        assert mig["status"] == "completed", mig
        assert mig["progress"] == 100 and mig["data_total"] > 0
        # only the overlay crossed, and what we wrote into it is counted
        assert 512 * 1024 <= mig["disk_processed"] < guest_image_size(lab, fname) // 4, dict(mig)
        assert lab.image_get_count(fname) == 1
        got = wait_state(agent, ctxt, B, uuid, "ACTIVE")
        chain = backing_chain(lab, B, "%s/%s/disk" % (INSTANCES, uuid))
        assert len(chain) == 2 and chain[0]["backing-filename-format"] == "raw"
        assert chain[0]["full-backing-filename"] == got["disk"]["backing_file"]
        assert chain[0]["virtual-size"] == 1024 ** 3
        assert read_pattern_ok(lab, B, uuid, "0x77", "100M")
        assert read_pattern_ok(lab, B, uuid, "0x55", "200M")
        # the guest itself still reads its base layer correctly on B
        check = guest.wait_for_check(console(lab, B, uuid), timeout=60)
        assert check.ok, check
        with pytest.raises(exception.InstanceNotFound) as e:
            agent.get_instance(ctxt, A, uuid)
        assert B in str(e.value)
        assert uuid not in host_run(lab, A, ["ls", INSTANCES]).split()
        assert virsh(lab, A, "list", "--all", "--name").split().count(
            "instance-" + uuid) == 0

        # B -> A, base present on A: zero GETs
        lab.reset_image_stats()
        mig = migrate(agent, ctxt, B, uuid, A)
        assert mig["status"] == "completed", mig
        assert lab.image_get_count(fname) == 0
        wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert guest.wait_for_check(console(lab, A, uuid), timeout=60).ok

        # A -> B again (B kept its base): zero GETs, still intact
        mig = migrate(agent, ctxt, A, uuid, B)
        assert mig["status"] == "completed", mig
        assert lab.image_get_count(fname) == 0
        wait_state(agent, ctxt, B, uuid, "ACTIVE")
        assert read_pattern_ok(lab, B, uuid, "0x77", "100M")
        assert guest.wait_for_check(console(lab, B, uuid), timeout=60).ok
    finally:
        cleanup(agent, ctxt, uuid)


def test_overlay_without_backing_file_is_caught(lab, agent, ctxt, guest_artifacts):
    """The 2011 failure, reproduced on purpose: the destination pre-creates the
    overlay without its backing file. The chain check flags it, the instance goes
    to ERROR, the source's files stay; the guest itself sees garbage."""
    img = fresh_image(lab, guest_artifacts, "flat")
    inst = spawn_on(agent, ctxt, A, img)
    uuid = inst["uuid"]
    lab.stop_agent(B)
    lab.start_agent(B, extra_conf={"debug": {"fault_injection": "flat_overlay"}})
    try:
        wait_for(lambda: agent.get_host_status(ctxt, B, timeout=5), timeout=60,
                 what="agent B back")
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        mig = migrate(agent, ctxt, A, uuid, B)
        assert mig["status"] == "failed"
        assert "no backing file" in mig["error"], mig
        got = agent.get_instance(ctxt, B, uuid)
        assert got["state"] == "ERROR"
        assert "backing chain check failed" in got["fault"]
        # the source kept its files for the operator
        assert "disk" in host_run(lab, A, ["ls", "%s/%s" % (INSTANCES, uuid)]).split()
        # and the guest on B really is on a broken disk
        with pytest.raises((AssertionError, TimeoutError, guest.GuestPanic)):
            check = guest.wait_for_check(console(lab, B, uuid), timeout=30)
            assert check.ok, check
    finally:
        lab.stop_agent(B)
        lab.start_agent(B, extra_conf={})
        wait_for(lambda: agent.get_host_status(ctxt, B, timeout=5), timeout=60,
                 what="agent B back")
        cleanup(agent, ctxt, uuid)
        wait_for(lambda: gone(agent, ctxt, B, uuid), what="delete on B")
        host_run(lab, A, ["rm", "-rf", "%s/%s" % (INSTANCES, uuid)])


def test_base_pulled_from_source_when_image_isgone(lab, agent, ctxt, guest_artifacts):
    img = fresh_image(lab, guest_artifacts, "gone")
    inst = spawn_on(agent, ctxt, A, img)
    uuid = inst["uuid"]
    try:
        os.unlink(os.path.join(lab.image_dir, os.path.basename(img["url"])))
        mig = migrate(agent, ctxt, A, uuid, B)
        assert mig["status"] == "completed", mig
        assert mig["dest_prepare"]["base_from"] == "source-host"
        assert mig["dest_prepare"]["base_digest"] == img["hash"]
        wait_state(agent, ctxt, B, uuid, "ACTIVE")
        assert guest.wait_for_check(console(lab, B, uuid), timeout=90).ok
    finally:
        cleanup(agent, ctxt, uuid)


def test_abort_mid_migration_keeps_guest_on_source(lab, agent, ctxt, guest_image):
    inst = spawn_on(agent, ctxt, A, guest_image)
    uuid = inst["uuid"]
    try:
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        virsh(lab, A, "migrate-setspeed", "instance-" + uuid, "1")   # 1 MiB/s
        mid = migrate(agent, ctxt, A, uuid, B, wait=False)
        wait_for(lambda: agent.get_migration(ctxt, A, mid)["status"] == "running",
                 timeout=60, what="running")
        time.sleep(1.5)
        agent.abort_migration(ctxt, A, mid)
        mig = wait_migration(agent, ctxt, A, mid)
        assert mig["status"] == "cancelled", mig
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["power_state"] == "RUNNING"
        assert virsh(lab, A, "domstate", "instance-" + uuid).strip() == "running"
        assert guest.wait_for_check(console(lab, A, uuid), timeout=60).ok
        # destination clean: no record, no domain, no instance dir; base kept
        assert gone(agent, ctxt, B, uuid)
        assert virsh(lab, B, "list", "--all", "--name").split().count(
            "instance-" + uuid) == 0
        assert uuid not in host_run(lab, B, ["ls", INSTANCES]).split()
    finally:
        cleanup(agent, ctxt, uuid)


def test_destination_agent_down_fails_cleanly(lab, agent, ctxt, guest_image):
    inst = spawn_on(agent, ctxt, A, guest_image)
    uuid = inst["uuid"]
    lab.stop_agent(B)
    try:
        mig = migrate(agent, ctxt, A, uuid, B, timeout=120)
        assert mig["status"] == "failed"
        assert "hostb" in mig["error"]
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["power_state"] == "RUNNING"
    finally:
        lab.start_agent(B)
        wait_for(lambda: agent.get_host_status(ctxt, B, timeout=5), timeout=60,
                 what="agent B back")
        cleanup(agent, ctxt, uuid)
    # a late-delivered pre-migration call must not leave anything on B
    time.sleep(1)
    assert gone(agent, ctxt, B, uuid)
    assert uuid not in host_run(lab, B, ["ls", INSTANCES]).split()


def test_second_migration_waits_queued_then_runs(lab, agent, ctxt, guest_image):
    one = spawn_on(agent, ctxt, A, guest_image, name="one")
    two = spawn_on(agent, ctxt, A, guest_image, name="two")
    try:
        virsh(lab, A, "migrate-setspeed", "instance-" + one["uuid"], "20")
        m1 = migrate(agent, ctxt, A, one["uuid"], B, wait=False)
        wait_for(lambda: agent.get_migration(ctxt, A, m1)["status"] in (
            "preparing", "running"), what="first started")
        m2 = migrate(agent, ctxt, A, two["uuid"], B, wait=False)
        time.sleep(0.5)
        first = agent.get_migration(ctxt, A, m1)["status"]
        second = agent.get_migration(ctxt, A, m2)["status"]
        assert first in ("preparing", "running"), first
        assert second == "queued", second
        assert wait_migration(agent, ctxt, A, m1)["status"] == "completed"
        assert wait_migration(agent, ctxt, A, m2)["status"] == "completed"
        wait_state(agent, ctxt, B, one["uuid"], "ACTIVE")
        wait_state(agent, ctxt, B, two["uuid"], "ACTIVE")
    finally:
        cleanup(agent, ctxt, one["uuid"])
        cleanup(agent, ctxt, two["uuid"])


def test_duplicate_live_migrate_cast_is_one_migration(lab, agent, ctxt, guest_image):
    inst = spawn_on(agent, ctxt, A, guest_image)
    uuid = inst["uuid"]
    try:
        mid = "dup-" + uuidlib.uuid4().hex[:8]
        for _ in range(3):
            agent.live_migrate(ctxt, A, uuid, B, mid)
        mig = wait_migration(agent, ctxt, A, mid)
        assert mig["status"] == "completed"
        time.sleep(1)
        mine = [m for m in agent.list_migrations(ctxt, A) if m["instance_uuid"] == uuid]
        assert len(mine) == 1
        assert wait_state(agent, ctxt, B, uuid, "ACTIVE")["state"] == "ACTIVE"
        assert virsh(lab, B, "list", "--name").split().count("instance-" + uuid) == 1
    finally:
        cleanup(agent, ctxt, uuid)


def test_tls_required_but_unavailable_fails_closed(lab, agent, ctxt, guest_image):
    """[migration] tls = true (the default) and the destination's QEMU has no TLS
    certificates (its qemu.conf points at an empty directory): the migration must
    fail, never fall back to plain TCP; the guest stays on the source."""
    inst = spawn_on(agent, ctxt, A, guest_image)
    uuid = inst["uuid"]
    os.makedirs(os.path.join(lab.host_dir(B), "etc/pki/qemu-empty"), exist_ok=True)
    try:
        for key in ("default_tls_x509_cert_dir", "migrate_tls_x509_cert_dir"):
            lab.set_qemu_conf(B, key, '"/etc/pki/qemu-empty"', restart=False)
        lab.restart_libvirtd(B)
        mig = migrate(agent, ctxt, A, uuid, B)
        assert mig["status"] == "failed", mig
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["power_state"] == "RUNNING"
        assert gone(agent, ctxt, B, uuid)
        assert uuid not in host_run(lab, B, ["ls", INSTANCES]).split()
    finally:
        for key in ("default_tls_x509_cert_dir", "migrate_tls_x509_cert_dir"):
            lab.set_qemu_conf(B, key, '"/etc/pki/qemu"', restart=False)
        lab.restart_libvirtd(B)
        cleanup(agent, ctxt, uuid)
