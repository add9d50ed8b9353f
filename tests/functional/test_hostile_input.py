"""Hostile payloads over the real bus: a clear error, the agent keeps serving, and
nothing is written outside the instance directories and _base."""

import pytest

from computeagent import exception
from tests.functional.conftest import gone, host_run, make_instance, wait_for, wait_state

pytestmark = pytest.mark.realstack

A = "hosta"
INSTANCES = "/var/lib/computeagent/instances"


def _snapshot(lab):
    out = host_run(lab, A, ["find", "/var/lib/computeagent", "/tmp", "-xdev",
                            "-newer", "/etc/hostname", "-type", "f"], check=False)
    return {line for line in out.splitlines()
            if not line.startswith(INSTANCES + "/") and "/state/" not in line
            and not line.startswith("/tmp/")}


BAD = [
    ("path-like uuid", lambda i: i.update(uuid="../../../etc/evil"), None),
    ("uuid with slash", lambda i: i.update(uuid="0b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a/.."),
     None),
    ("name wrong type", lambda i: i.update(name={"x": 1}), "name"),
    ("negative memory", lambda i: i["flavor"].update(memory_mb=-96), "memory_mb"),
    ("string vcpus", lambda i: i["flavor"].update(vcpus="2"), "vcpus"),
    ("bad MAC", lambda i: i["networks"][0].update(mac="52:54:00:zz:00:01"), "mac"),
    ("bad IP", lambda i: i["networks"][0].update(fixed_ips=["10.0.0.999"]), "IP"),
    ("unknown network", lambda i: i["networks"][0].update(bridge="br-nope"),
     "unknown network"),
    ("negative size", lambda i: i["image"].update(size=-1), "size"),
    ("file url outside allowed dirs",
     lambda i: i["image"].update(url="file:///etc/shadow"), "file"),
    ("missing flavor", lambda i: i.pop("flavor"), "flavor"),
]


@pytest.mark.parametrize("label,mutate,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_spawn_payload(lab, agent, ctxt, guest_image, label, mutate, fragment):
    before = _snapshot(lab)
    inst = make_instance(guest_image)
    good_uuid = inst["uuid"]
    mutate(inst)
    agent.spawn(ctxt, A, inst)
    if inst.get("uuid") == good_uuid:
        got = wait_state(agent, ctxt, A, good_uuid, "ERROR", timeout=60)
        assert got["fault"], got
        if fragment:
            assert fragment.lower() in got["fault"].lower(), got["fault"]
        assert host_run(lab, A, ["ls", INSTANCES]).split().count(good_uuid) == 0
        agent.delete(ctxt, A, good_uuid)
        wait_for(lambda: gone(agent, ctxt, A, good_uuid), what="delete of ERROR")
    # the agent still serves, and wrote nothing outside its directories
    assert agent.get_host_status(ctxt, A)["libvirt_connected"]
    assert _snapshot(lab) - before == set()


def test_xml_metacharacters_in_name_and_metadata(lab, agent, ctxt, guest_image):
    inst = make_instance(guest_image, name="</name><devices><disk/>&amp;'\"")
    inst["metadata"] = {"<script>": "]]><evil/>", "k": "&"}
    agent.spawn(ctxt, A, inst)
    got = wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    assert got["name"] == inst["name"]
    assert got["metadata"] == inst["metadata"]
    agent.delete(ctxt, A, inst["uuid"])
    wait_for(lambda: gone(agent, ctxt, A, inst["uuid"]), what="delete")


def test_bad_fixed_ip_changes_nothing(lab, agent, ctxt, guest_image):
    inst = make_instance(guest_image, ips=["10.0.2.5"])
    agent.spawn(ctxt, A, inst)
    wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    agent.add_fixed_ip(ctxt, A, inst["uuid"], "net1", "not-an-ip")
    agent.add_fixed_ip(ctxt, A, inst["uuid"], "no-such-net", "10.0.2.9")
    agent.add_fixed_ip(ctxt, A, "../etc", "net1", "10.0.2.9")
    agent.add_fixed_ip(ctxt, A, inst["uuid"], "net1", "10.0.2.6")  # a good one after
    got = wait_for(lambda: (lambda i: i if "10.0.2.6" in i["networks"][0]["fixed_ips"]
                            else None)(agent.get_instance(ctxt, A, inst["uuid"])),
                   what="good IP applied")
    assert got["networks"][0]["fixed_ips"] == ["10.0.2.5", "10.0.2.6"]
    assert got["state"] == "ACTIVE"
    agent.delete(ctxt, A, inst["uuid"])
    wait_for(lambda: gone(agent, ctxt, A, inst["uuid"]), what="delete")


def test_wrong_argument_types_on_calls(agent, ctxt):
    with pytest.raises(exception.InvalidInput):
        agent.get_instance(ctxt, A, 12345)
    with pytest.raises(exception.InvalidInput):
        agent.get_migration(ctxt, A, "../../x")
