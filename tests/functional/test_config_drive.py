"""The config drive and every fixed IP, proven with real packets (issue 13).

One guest for the whole module (booted once under TCG): it reads network_data.json
from its config drive, configures every address, and runs its user_data (below) every
round: from each candidate address it pings the host's br-lab, adding an address that
is not configured for that one ping, then once with a forged MAC. The nwfilter
(clean-traffic, one IP parameter per fixed IP) decides which replies come back; an
AF_PACKET sniffer on br-lab shows what reached the bridge at all.
"""
import base64
import json
import re
import sys
import time
import uuid as uuidlib

import pytest

from computeagent.lab import console as lconsole
from computeagent.lab import layout
from tests.functional.conftest import (TCG_LIVE_MIGRATION, delete_everywhere, host_file_text, host_run,
                                       make_instance, wait_for, wait_state)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

A, B = "hosta", "hostb"
INSTANCES = "/var/lib/computeagent/instances"
P = layout.GUEST_PREFIX
IP5, IP6, IP7, IP99 = P + ".5", P + ".6", P + ".7", P + ".99"   # .7 added later, .99 never
V6 = layout.GUEST_BRIDGE_IP6.replace("::1", "::5")
FORGED_MAC = "52:54:00:de:ad:01"
CANDIDATES = (IP5, IP6, IP7, IP99)
# a value that would break naive JSON or XML writers: it must arrive verbatim
META = {"role": "probe", "issue": "13", "quote": '"}, "uuid": "evil",\n<x a=\'1\'/>&'}

PROBE = """#!/bin/sh
r=$1
b=%(bridge)s
for a in %(candidates)s; do
    extra=
    ip -4 addr show dev eth0 | grep -q " $a/" || { ip addr add $a/32 dev eth0; extra=1; }
    ping -c 1 -W 2 -I $a $b >/dev/null 2>&1 && s=OK || s=FAIL
    [ -n "$extra" ] && ip addr del $a/32 dev eth0
    echo "GUESTPING $r ${extra:+extra}${extra:-fixed} $a $s"
done
mac=$(cat /sys/class/net/eth0/address)
if ip link set eth0 address %(forged)s; then
    ping -c 1 -W 2 -I %(ip5)s $b >/dev/null 2>&1 && s=OK || s=FAIL
    ip link set eth0 address $mac
    echo "GUESTPING $r forged-mac %(ip5)s $s"
fi
echo "GUESTPINGEND $r"
""" % {"bridge": layout.GUEST_BRIDGE_IP, "candidates": " ".join(CANDIDATES),
       "forged": FORGED_MAC, "ip5": IP5}


def console_text(lab, host, uuid):
    return host_file_text(lab, host, "%s/%s/console.log" % (INSTANCES, uuid))


def since_boot(text):
    i = text.rfind("GUESTBOOT ")
    return text[i:] if i >= 0 else text


def drive(lab, host, uuid):
    """The config drive on ``host`` as read back from the image: {digest, files}."""
    out = host_run(lab, host, [sys.executable, "-m", "computeagent.configdrive.iso",
                               "show", "%s/%s/disk.config" % (INSTANCES, uuid)])
    return json.loads(out)


def wait_net(lab, host, uuid, addrs, timeout=120):
    """The guest's latest GUESTNET line once it lists exactly ``addrs``."""
    def ok():
        nets = lconsole.parse_net(since_boot(console_text(lab, host, uuid)))
        return nets and set(a.split("/")[0] for a in nets[-1].addrs) == set(addrs) \
            and nets[-1]
    try:
        return wait_for(ok, timeout=timeout, interval=1, what="GUESTNET with %s" % (addrs,))
    except AssertionError as e:
        text = "\n".join(line for line in console_text(lab, host, uuid).splitlines()
                         if not line.startswith(("GUESTCHECK", "GUESTPING")))
        raise AssertionError("%s\nconsole (no check/ping lines):\n%s" % (e, text[-3000:]))


def fresh_round(lab, host, uuid, timeout=120):
    """Results of the first probe round that starts after this call."""
    rounds = lconsole.parse_pings(since_boot(console_text(lab, host, uuid)))
    after = max(rounds) if rounds else 0

    def ok():
        got = lconsole.parse_pings(since_boot(console_text(lab, host, uuid)))
        newer = [r for r in got if r > after + 1]
        return newer and {k[1] if k[0] != "forged-mac" else "forged-mac": v
                          for k, v in got[min(newer)].items()}
    return wait_for(ok, timeout=timeout, interval=1, what="a fresh probe round")


def sniff(lab, host, seconds):
    out = host_run(lab, host, [sys.executable, "-m", "computeagent.lab.sniff",
                               layout.HOST_BRIDGE, str(seconds)])
    return json.loads(out)


@pytest.fixture(scope="module")
def vm(lab, agent, guest_image):
    ctxt = {"request_id": "req-cd-" + uuidlib.uuid4().hex[:8]}
    inst = make_instance(guest_image, name="cd-guest", ips=(IP5, IP6, V6),
                         metadata=META,
                         config_drive=True,
                         user_data=base64.b64encode(PROBE.encode()).decode())
    inst["networks"][0]["subnets"] = [{"cidr": layout.GUEST_CIDR},
                                      {"cidr": layout.GUEST_CIDR6}]
    agent.spawn(ctxt, A, inst)
    wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    state = {"inst": inst, "ctxt": ctxt, "host": A}
    try:
        yield state
    finally:
        delete_everywhere(agent, ctxt, inst["uuid"])


def test_drive_content_and_guest_configures_every_address(lab, agent, vm):
    uuid = vm["inst"]["uuid"]
    d = drive(lab, A, uuid)
    nd = json.loads(d["files"]["openstack/latest/network_data.json"])
    assert [n["ip_address"] for n in nd["networks"]] == [IP5, IP6, V6]
    assert nd["links"][0]["ethernet_mac_address"] == vm["inst"]["networks"][0]["mac"]
    md = json.loads(d["files"]["openstack/latest/meta_data.json"])
    assert md["uuid"] == uuid and md["meta"] == META
    assert d["files"]["openstack/latest/user_data"] == PROBE
    assert agent.get_instance(vm["ctxt"], A, uuid)["config_drive"] is True
    xml = host_run(lab, A, ["virsh", "dumpxml", "instance-" + uuid])
    assert re.search(r"<disk type='file' device='cdrom'>.*?<readonly/>", xml, re.S)
    net = wait_net(lab, A, uuid, (IP5, IP6, V6))
    assert net.mac == vm["inst"]["networks"][0]["mac"]
    assert set(net.addrs) == {IP5 + "/24", IP6 + "/24", V6 + "/64"}


def test_packets_from_fixed_ips_pass_spoofed_ones_are_dropped(lab, agent, vm):
    uuid = vm["inst"]["uuid"]
    wait_net(lab, A, uuid, (IP5, IP6, V6))
    seen = []
    import threading
    t = threading.Thread(target=lambda: seen.extend(sniff(lab, A, 25)))
    t.start()
    r = fresh_round(lab, A, uuid)
    t.join()
    assert r[IP5] and r[IP6], r
    assert not r[IP7] and not r[IP99] and not r["forged-mac"], r
    srcs = {f.get("src_ip") for f in seen if f["src_mac"] != FORGED_MAC}
    assert IP5 in srcs and IP6 in srcs, seen[:20]
    assert IP99 not in srcs and IP7 not in srcs
    assert not [f for f in seen if f["src_mac"] == FORGED_MAC]


def test_add_and_remove_fixed_ip_reach_the_running_guest(lab, agent, vm):
    uuid, ctxt = vm["inst"]["uuid"], vm["ctxt"]
    boots = len(lconsole.parse_boots(console_text(lab, A, uuid)))
    before = drive(lab, A, uuid)["digest"]
    agent.add_fixed_ip(ctxt, A, uuid, "net1", IP7)
    wait_net(lab, A, uuid, (IP5, IP6, V6, IP7))
    assert drive(lab, A, uuid)["digest"] != before
    r = fresh_round(lab, A, uuid)
    assert r[IP5] and r[IP6] and r[IP7] and not r[IP99], r
    agent.remove_fixed_ip(ctxt, A, uuid, "net1", IP6)
    wait_net(lab, A, uuid, (IP5, V6, IP7))
    r = fresh_round(lab, A, uuid)
    assert r[IP5] and r[IP7] and not r[IP6] and not r[IP99], r
    assert len(lconsole.parse_boots(console_text(lab, A, uuid))) == boots  # no reboot
    nets = agent.get_instance(ctxt, A, uuid)["networks"][0]["fixed_ips"]
    assert nets == [IP5, V6, IP7]


def test_live_migration_carries_the_drive_and_the_filter(lab, agent, vm):
    from tests.functional.test_live_migration import migrate
    uuid, ctxt = vm["inst"]["uuid"], vm["ctxt"]
    src = drive(lab, A, uuid)
    m = migrate(agent, ctxt, A, uuid, B)
    assert m["status"] == "completed", m
    wait_state(agent, ctxt, B, uuid, "ACTIVE")
    vm["host"] = B
    dst = drive(lab, B, uuid)
    assert dst == src
    r = fresh_round(lab, B, uuid)
    for _ in range(3):   # the destination's console may begin inside a round
        if IP5 in r:
            break
        r = fresh_round(lab, B, uuid)
    assert r[IP5] and r[IP7] and not r[IP6] and not r[IP99] and not r["forged-mac"], r


def test_resize_carries_the_drive(lab, agent, vm):
    uuid, ctxt = vm["inst"]["uuid"], vm["ctxt"]
    src_host = vm["host"]
    dest = A if src_host == B else B
    src = drive(lab, src_host, uuid)
    mid = "rs-cd-" + uuidlib.uuid4().hex[:8]
    flavor = dict(vm["inst"]["flavor"], name="lab.bigger", root_gb=2)
    agent.resize(ctxt, src_host, uuid, dest, flavor, mid)
    wait_state(agent, ctxt, dest, uuid, "RESIZE_VERIFY", timeout=180)
    assert drive(lab, dest, uuid) == src
    net = wait_net(lab, dest, uuid, (IP5, V6, IP7))
    assert net.mac == vm["inst"]["networks"][0]["mac"]
    agent.confirm_resize(ctxt, dest, uuid, mid)
    wait_state(agent, ctxt, dest, uuid, "ACTIVE")
    vm["host"] = dest
    time.sleep(0)


@pytest.mark.parametrize("bad, field", [
    ({"metadata": {"../../../etc/cron.d/x": "v"}}, "metadata"),
    ({"metadata": {"k": "nul\x00byte"}}, "metadata/k"),
    ({"user_data": base64.b64encode(b"\x00" * 70000).decode()}, "user_data"),
    ({"user_data": "../../etc/passwd"}, "user_data"),
])
def test_hostile_metadata_and_user_data_are_refused(lab, agent, guest_image, bad, field):
    ctxt = {"request_id": "req-cdbad-" + uuidlib.uuid4().hex[:8]}
    inst = make_instance(guest_image, name="cd-bad", config_drive=True, **bad)
    agent.spawn(ctxt, A, inst)
    try:
        got = wait_state(agent, ctxt, A, inst["uuid"], "ERROR", timeout=60)
        assert got["fault"].startswith("Invalid input: " + field), got["fault"]
        assert host_run(lab, A, ["ls", INSTANCES]).split().count(inst["uuid"]) == 0
        assert host_run(lab, A, ["virsh", "list", "--all", "--name"]).find(
            inst["uuid"]) < 0
    finally:
        delete_everywhere(agent, ctxt, inst["uuid"])
