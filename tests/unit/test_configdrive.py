"""Config drive: content, image round trip, digests, the spawn payload's limits, and
the drive on the fake stack (spawn, same-host resize)."""
import base64
import json
import os
import xml.etree.ElementTree as ET

import pytest

from computeagent import exception
from computeagent.configdrive import content
from computeagent.configdrive import iso
from computeagent.rpc import schema
from computeagent.virt import config as vconfig

from tests.unit.test_agent_fake import agent_env, inst_payload, state_of, wait  # noqa: F401

UUID = "0e6b7d1c-1111-2222-3333-444455556666"


def _inst(**kw):
    inst = {"uuid": UUID, "name": "Web Server 1", "metadata": {"role": "web"},
            "networks": [
                {"id": "net1", "bridge": "br-lab", "mac": "52:54:00:AA:BB:01",
                 "fixed_ips": ["198.19.206.5", "198.19.206.6", "2001:db8:6::5",
                               "203.0.113.9"],
                 "subnets": [{"cidr": "198.19.206.0/24", "gateway": "198.19.206.1"},
                             {"cidr": "2001:db8:6::/64"}]},
                {"id": "net2", "bridge": "br-lab", "mac": "52:54:00:aa:bb:02",
                 "fixed_ips": ["198.19.207.7"]}]}
    inst.update(kw)
    return inst


def test_network_data_has_every_fixed_ip_by_mac():
    nd = content.network_data(_inst())
    assert [lk["ethernet_mac_address"] for lk in nd["links"]] == [
        "52:54:00:aa:bb:01", "52:54:00:aa:bb:02"]
    got = [(n["link"], n["type"], n["ip_address"], n["netmask"]) for n in nd["networks"]]
    assert got == [
        ("tap0", "ipv4", "198.19.206.5", "255.255.255.0"),
        ("tap0", "ipv4", "198.19.206.6", "255.255.255.0"),
        ("tap0", "ipv6", "2001:db8:6::5", "ffff:ffff:ffff:ffff::"),
        ("tap0", "ipv4", "203.0.113.9", "255.255.255.255"),   # in no subnet: host
        ("tap1", "ipv4", "198.19.207.7", "255.255.255.255")]
    assert nd["networks"][0]["routes"] == [
        {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "198.19.206.1"}]
    assert len({n["id"] for n in nd["networks"]}) == 5


def test_meta_data():
    md = json.loads(content.drive_files(_inst())[content.META_DATA])
    assert md["uuid"] == UUID and md["meta"] == {"role": "web"}
    assert md["hostname"] == "web-server-1"


def test_iso_round_trip_label_and_stable_digest(tmp_path):
    files = content.drive_files(_inst(), b"#!/bin/sh\necho hi\n\x00\xff")
    a, b = tmp_path / "a.config", tmp_path / "b.config"
    da = iso.write(str(a), files)
    db = iso.write(str(b), content.drive_files(_inst(), b"#!/bin/sh\necho hi\n\x00\xff"))
    assert da == db == iso.content_digest(str(a)) == iso.content_digest(str(b))
    assert iso.read(str(a)) == files
    with open(a, "rb") as f:
        f.seek(16 * 2048 + 40)
        assert f.read(32).decode().strip() == "config-2"
    assert oct(os.stat(a).st_mode & 0o777) == "0o644"
    other = content.drive_files(_inst(networks=[]), None)
    assert iso.files_digest(other) != da
    assert content.USER_DATA not in iso.read(str(iso.write(str(a), other) and a))


def test_read_refuses_what_is_not_a_config_drive(tmp_path):
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x00" * 100000)
    with pytest.raises(iso.ConfigDriveError):
        iso.read(str(junk))
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(iso.MAX_IMAGE_BYTES + 1)
    with pytest.raises(iso.ConfigDriveError, match="more than"):
        iso.read(str(big))
    with pytest.raises(iso.ConfigDriveError):
        iso.write(str(tmp_path / "x"), {"../../etc/passwd": b"x"})


def _payload(**kw):
    p = {"uuid": UUID, "name": "vm",
         "flavor": {"name": "f", "vcpus": 1, "memory_mb": 96, "root_gb": 1},
         "image": {"id": "i", "url": "http://x/y", "disk_format": "raw", "size": 1,
                   "hash_algo": "sha256", "hash": "a" * 64},
         "networks": [{"id": "n", "bridge": "br-lab", "mac": "52:54:00:00:00:01",
                       "fixed_ips": ["198.19.206.5"]}]}
    p.update(kw)
    return p


@pytest.mark.parametrize("bad, match", [
    ({"metadata": {"../../etc/passwd": "x"}}, "does not match"),
    ({"metadata": {"a/b": "x"}}, "does not match"),
    ({"metadata": {"k": "bin\x00ary"}}, "does not match"),
    ({"metadata": {"k": "x" * 5000}}, "fails maxLength 4096"),
    ({"metadata": {"k%d" % i: "v" for i in range(200)}}, "maxProperties 128"),
    ({"user_data": "not base64!"}, "not valid base64"),
    ({"user_data": base64.b64encode(b"x" * 65536).decode()}, "at most 65535|fails maxLength"),
    ({"user_data": 12}, "is not of type"),
    ({"user_data": "eA==", "config_drive": False}, "needs config_drive"),
    ({"networks": [{"id": "n", "bridge": "br-lab", "mac": "52:54:00:00:00:01",
                    "fixed_ips": [], "subnets": [{"cidr": "198.19.206.5/24"}]}]},
     "not a network address"),
    ({"networks": [{"id": "n", "bridge": "br-lab", "mac": "52:54:00:00:00:01",
                    "fixed_ips": [], "subnets": [{"cidr": "198.19.206.0/24",
                                                  "gateway": "10.1.1.1"}]}]},
     "is not in"),
])
def test_hostile_spawn_payloads_are_refused(bad, match):
    with pytest.raises(exception.InvalidInput, match=match):
        schema.validate_instance(_payload(**bad), ["br-lab"])


def test_good_payload_keeps_binary_user_data():
    data = bytes(range(256)) * 10
    inst = schema.validate_instance(
        _payload(user_data=base64.b64encode(data).decode(), config_drive=True,
                 metadata={"role": "web", "a.b:c-d_e": "tab\tand\nnewline ok"}),
        ["br-lab"])
    assert schema.decode_user_data(inst["user_data"]) == data


def test_domain_xml_attaches_a_read_only_cdrom():
    inst = _inst(flavor={"name": "f", "vcpus": 1, "memory_mb": 96, "root_gb": 1})
    xml = vconfig.build_domain_xml(inst, "/i/disk", config_drive="/i/disk.config")
    root = ET.fromstring(xml)
    cd = root.find("./devices/disk[@device='cdrom']")
    assert cd.find("source").get("file") == "/i/disk.config"
    assert cd.find("readonly") is not None and cd.find("target").get("bus") == "scsi"
    assert root.find("./devices/controller[@model='virtio-scsi']") is not None
    assert vconfig.parse_domain(xml)["config_drive"] == "/i/disk.config"
    assert ET.fromstring(vconfig.config_drive_xml(None)).find("source") is None
    assert ET.fromstring(vconfig.build_domain_xml(inst, "/i/disk")).find(
        "./devices/disk[@device='cdrom']") is None


def test_fake_stack_spawn_builds_the_drive_and_resize_keeps_it(agent_env):  # noqa: F811
    svc, client, image, tmp = agent_env
    ud = b"#!/bin/sh\necho hello\n"
    p = inst_payload(image, user_data=base64.b64encode(ud).decode(),
                     metadata={"role": "db"})
    client.spawn({}, "fakehost", p)
    wait(lambda: (state_of(client, p["uuid"]) or {}).get("state") == "ACTIVE")
    path = tmp / "inst" / p["uuid"] / "disk.config"
    files = iso.read(str(path))
    assert files[content.USER_DATA] == ud
    nd = json.loads(files[content.NETWORK_DATA])
    assert [n["ip_address"] for n in nd["networks"]] == ["10.0.0.2", "10.0.0.3"]
    assert client.get_instance({}, "fakehost", p["uuid"])["config_drive"] is True
    dom = svc.manager.driver.lookup(p["uuid"])
    assert vconfig.parse_domain(dom.XMLDesc(0))["config_drive"] == str(path)
    before = iso.content_digest(str(path))
    flavor = {"name": "g", "vcpus": 1, "memory_mb": 64, "root_gb": 2}
    client.resize({}, "fakehost", p["uuid"], "fakehost", flavor, "mig-cd-1")
    wait(lambda: (state_of(client, p["uuid"]) or {}).get("state") == "RESIZE_VERIFY", timeout=30)
    assert iso.content_digest(str(path)) == before
