"""Spawn and lifecycle on the real stack: two processes talk over the lab's
RabbitMQ (this test process as the scheduler, the agent inside host A's
namespaces), libvirtd runs QEMU (TCG), qemu-img builds the disks."""
import concurrent.futures
import os
import signal
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

import pytest

from computeagent import exception
from tests.functional.conftest import (gone, backing_chain, host_file_text, host_run,
                                       make_instance, publish_image, virsh, wait_for,
                                       wait_state)

pytestmark = pytest.mark.realstack

A = "hosta"
INSTANCES = "/var/lib/computeagent/instances"


def ebtables_ips(lab, host):
    out = host_run(lab, host, ["ebtables", "-t", "nat", "-L"])
    ips = set()
    for line in out.splitlines():
        parts = line.split()
        for flag in ("--ip-src", "--arp-ip-src"):
            if flag in parts:
                ips.add((flag, parts[parts.index(flag) + 1]))
    return ips


def filter_ips(xml):
    root = ET.fromstring(xml)
    return [[p.get("value") for p in i.findall("./filterref/parameter")]
            for i in root.findall("./devices/interface")]


@pytest.fixture
def spawned(lab, agent, ctxt, guest_image):
    created = []

    def spawn(host=A, **kw):
        inst = make_instance(guest_image, **kw)
        agent.spawn(ctxt, host, inst)
        created.append((host, inst["uuid"]))
        return inst
    yield spawn
    for host, uuid in created:
        try:
            agent.delete(ctxt, host, uuid)
        except Exception:
            pass
    for host, uuid in created:
        try:
            wait_for(lambda: gone(agent, ctxt, host, uuid), timeout=60, what="delete")
        except AssertionError:
            pass


def test_agent_warns_at_start_up_that_tcg_live_migration_loses_writes(lab, agent):
    """The lab's hosts run TCG on Debian's QEMU 7.2: the operator's log says so."""
    with open(lab.agent_log("hosta"), errors="replace") as f:
        text = f.read()
    assert "virt_type=qemu (TCG) on QEMU 7.2" in text
    assert "a live migration can lose guest writes" in text


def test_spawn_active_chain_and_every_fixed_ip(lab, agent, ctxt, spawned, guest_image):
    ips = ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    inst = spawned(name="spawn <&> test", ips=ips)
    got = wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    assert got["power_state"] == "RUNNING"
    assert got["name"] == "spawn <&> test"
    dom = "instance-" + inst["uuid"]
    assert virsh(lab, A, "domstate", dom).strip() == "running"
    disk = "%s/%s/disk" % (INSTANCES, inst["uuid"])
    chain = backing_chain(lab, A, disk)
    assert len(chain) == 2
    assert chain[0]["format"] == "qcow2"
    assert chain[0]["backing-filename-format"] == "raw"
    assert chain[0]["full-backing-filename"].startswith(INSTANCES + "/_base/")
    assert chain[1]["format"] == "raw"
    assert chain[0]["virtual-size"] == 1024 ** 3
    assert got["disk"]["backing_file"] == chain[0]["full-backing-filename"]
    # every fixed IP in the live XML and on the wire (ebtables in host A's namespace)
    assert filter_ips(virsh(lab, A, "dumpxml", dom)) == [ips]
    rules = ebtables_ips(lab, A)
    for ip in ips:
        assert ("--ip-src", ip) in rules and ("--arp-ip-src", ip) in rules
    # and the guest really boots from that disk and checks its files
    from computeagent.lab import guest
    line = guest.wait_for_check(lambda: host_file_text(
        lab, A, "%s/%s/console.log" % (INSTANCES, inst["uuid"])), timeout=90)
    assert line.ok, line


def test_add_and_remove_fixed_ip_live(lab, agent, ctxt, spawned):
    inst = spawned(ips=["10.0.1.5"])
    wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    dom = "instance-" + inst["uuid"]
    agent.add_fixed_ip(ctxt, A, inst["uuid"], "net1", "10.0.1.6")
    wait_for(lambda: filter_ips(virsh(lab, A, "dumpxml", dom)) == [["10.0.1.5", "10.0.1.6"]],
             what="live XML with the new IP")
    wait_for(lambda: ("--ip-src", "10.0.1.6") in ebtables_ips(lab, A), what="ebtables")
    assert filter_ips(virsh(lab, A, "dumpxml", "--inactive", dom)) == [
        ["10.0.1.5", "10.0.1.6"]]
    agent.remove_fixed_ip(ctxt, A, inst["uuid"], "net1", "10.0.1.5")
    wait_for(lambda: filter_ips(virsh(lab, A, "dumpxml", dom)) == [["10.0.1.6"]],
             what="live XML without the old IP")
    wait_for(lambda: ("--ip-src", "10.0.1.5") not in ebtables_ips(lab, A), what="ebtables")
    assert ("--ip-src", "10.0.1.6") in ebtables_ips(lab, A)
    got = agent.get_instance(ctxt, A, inst["uuid"])
    assert got["networks"][0]["fixed_ips"] == ["10.0.1.6"]
    assert got["power_state"] == "RUNNING"


def test_stop_start_reboot_delete_and_destroy_behind_back(lab, agent, ctxt, spawned):
    inst = spawned()
    uuid = inst["uuid"]
    dom = "instance-" + uuid
    wait_state(agent, ctxt, A, uuid, "ACTIVE")
    agent.stop(ctxt, A, uuid)
    assert wait_state(agent, ctxt, A, uuid, "STOPPED")["power_state"] == "SHUTDOWN"
    assert virsh(lab, A, "domstate", dom).strip() == "shut off"
    agent.start(ctxt, A, uuid)
    assert wait_state(agent, ctxt, A, uuid, "ACTIVE")["power_state"] == "RUNNING"
    pid_before = host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom]).strip()
    agent.reboot(ctxt, A, uuid)
    wait_for(lambda: host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom],
                              check=False).strip() not in ("", pid_before),
             what="new QEMU after reboot")
    assert wait_state(agent, ctxt, A, uuid, "ACTIVE")["power_state"] == "RUNNING"
    # destroyed behind the agent's back -> STOPPED within seconds
    t0 = time.monotonic()
    virsh(lab, A, "destroy", dom)
    wait_state(agent, ctxt, A, uuid, "STOPPED", timeout=15)
    assert time.monotonic() - t0 < 10
    agent.delete(ctxt, A, uuid)
    wait_for(lambda: gone(agent, ctxt, A, uuid), what="record gone")
    assert virsh(lab, A, "domstate", dom, check=False).strip() == ""
    assert host_run(lab, A, ["ls", INSTANCES]).split().count(uuid) == 0
    assert "_base" in host_run(lab, A, ["ls", INSTANCES]).split()


def test_agent_sigkill_restart_keeps_records_and_guests(lab, agent, ctxt, spawned):
    inst = spawned()
    uuid = inst["uuid"]
    dom = "instance-" + uuid
    wait_state(agent, ctxt, A, uuid, "ACTIVE")
    qemu_pid = host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom]).strip()
    before = agent.list_instances(ctxt, A)
    lab.stop_agent(A, sig=signal.SIGKILL)
    lab.start_agent(A)
    after = wait_for(lambda: agent.list_instances(ctxt, A, timeout=5), timeout=60,
                     what="agent serving again")
    key = lambda lst: sorted((i["uuid"], i["state"]) for i in lst)
    assert key(after) == key(before)
    assert host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom]).strip() == qemu_pid
    assert virsh(lab, A, "domstate", dom).strip() == "running"


def test_libvirtd_restart_agent_serves_guests_untouched(lab, agent, ctxt, spawned):
    inst = spawned()
    uuid = inst["uuid"]
    dom = "instance-" + uuid
    wait_state(agent, ctxt, A, uuid, "ACTIVE")
    qemu_pid = host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom]).strip()
    reconnects = agent.get_host_status(ctxt, A)["libvirt_reconnects"]
    lab.restart_libvirtd(A)
    wait_for(lambda: agent.get_host_status(ctxt, A)["libvirt_reconnects"] > reconnects,
             timeout=30, what="agent reconnected to libvirtd")
    st = agent.get_host_status(ctxt, A)
    assert st["libvirt_connected"] is True
    assert host_run(lab, A, ["cat", "/run/libvirt/qemu/%s.pid" % dom]).strip() == qemu_pid
    # events are registered again: a destroy behind its back is noticed
    virsh(lab, A, "destroy", dom)
    wait_state(agent, ctxt, A, uuid, "STOPPED", timeout=15)
    agent.start(ctxt, A, uuid)
    wait_state(agent, ctxt, A, uuid, "ACTIVE")


def test_eight_concurrent_spawns_one_download(lab, agent, ctxt, spawned, guest_artifacts):
    # a fresh image id/file, so the base is not cached yet
    img = publish_image(lab, guest_artifacts.base_raw, "concurrent-%s.raw" % uuidlib.uuid4().hex[:8],
                        "raw")
    lab.reset_image_stats()
    insts = []
    for i in range(8):
        inst = make_instance(img, name="c%d" % i, memory_mb=64)
        insts.append(inst)
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda inst: agent.spawn(ctxt, A, inst), insts))
    for inst in insts:
        wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE", timeout=180)
    assert lab.image_get_count(os.path.basename(img["url"])) == 1
    for inst in insts:
        agent.delete(ctxt, A, inst["uuid"])
    for inst in insts:
        wait_for(lambda: gone(agent, ctxt, A, inst["uuid"]), what="delete")


def test_duplicate_spawn_makes_one_domain(lab, agent, ctxt, spawned):
    inst = spawned()
    agent.spawn(ctxt, A, inst)
    agent.spawn(ctxt, A, inst)
    wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    time.sleep(1)
    doms = virsh(lab, A, "list", "--all", "--name").split()
    assert doms.count("instance-" + inst["uuid"]) == 1
    assert agent.get_instance(ctxt, A, inst["uuid"])["state"] == "ACTIVE"


def test_unknown_instance_raises_instance_not_found(agent, ctxt):
    with pytest.raises(exception.InstanceNotFound):
        agent.get_instance(ctxt, A, "00000000-0000-4000-8000-000000000000")
    with pytest.raises(exception.InvalidInput):
        agent.get_instance(ctxt, A, "../../etc/passwd")
