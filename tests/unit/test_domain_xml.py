"""Domain XML: every fixed IP, escaped names, round trip through parse_domain."""
import xml.etree.ElementTree as ET

from computeagent.virt import config

INST = {
    "uuid": "0b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a",
    "name": "evil</name><devices><disk type='file'><source file='/etc/shadow'/>&x;",
    "flavor": {"name": "m", "vcpus": 2, "memory_mb": 96, "root_gb": 1},
    "image": {"id": "i"},
    "networks": [
        {"id": "n1", "bridge": "br-lab", "mac": "52:54:00:00:00:01",
         "fixed_ips": ["10.0.0.5", "10.0.0.6", "10.0.0.7"]},
        {"id": "n2", "bridge": "br-lab", "mac": "52:54:00:00:00:02",
         "fixed_ips": ["10.1.0.5", "fd00::9"]},
    ],
    "metadata": {"<k>": "\"v'&"},
}


def test_every_fixed_ip_is_a_filter_parameter():
    xml = config.build_domain_xml(INST, "/i/disk", virt_type="qemu")
    root = ET.fromstring(xml)
    ifaces = root.findall("./devices/interface")
    assert len(ifaces) == 2
    got = [[(p.get("name"), p.get("value")) for p in i.find("filterref")]
           for i in ifaces]
    assert got[0] == [("IP", "10.0.0.5"), ("IP", "10.0.0.6"), ("IP", "10.0.0.7")]
    assert got[1] == [("IP", "10.1.0.5"), ("IPV6", "fd00::9")]


def test_hostile_name_stays_text():
    xml = config.build_domain_xml(INST, "/i/disk", virt_type="qemu")
    root = ET.fromstring(xml)
    # one disk only, the one we asked for
    disks = root.findall("./devices/disk")
    assert [d.find("source").get("file") for d in disks] == ["/i/disk"]
    facts = config.parse_domain(xml)
    assert facts["instance"]["name"] == INST["name"]
    assert facts["instance"]["metadata"] == INST["metadata"]
    assert facts["interfaces"][0]["fixed_ips"] == ["10.0.0.5", "10.0.0.6", "10.0.0.7"]
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "instance-" + INST["uuid"]


def test_direct_kernel_boot():
    xml = config.build_domain_xml(INST, "/i/disk", kernel="/k", initrd="/r",
                                  cmdline="console=ttyS0")
    root = ET.fromstring(xml)
    assert root.findtext("./os/kernel") == "/k"
    assert root.find("./os/boot") is None


class _VanishingDomain:
    """A domain listed a moment ago whose job finished meanwhile (libvirt
    undefined it at the end of a live migration)."""
    def __init__(self, xml, gone_at):
        self._xml, self._gone_at = xml, gone_at

    def _maybe_gone(self, what):
        import libvirt
        if what == self._gone_at:
            err = libvirt.libvirtError("Domain not found")
            err.err = (libvirt.VIR_ERR_NO_DOMAIN, 0, "Domain not found", 0, "", "",
                       "", 0, 0)
            raise err

    def XMLDesc(self, flags=0):
        self._maybe_gone("xml")
        return self._xml

    def state(self):
        self._maybe_gone("state")
        return (1, 1)


def test_managed_domains_skip_one_that_vanishes_while_listed():
    import types
    from computeagent.virt.driver import LibvirtDriver
    xml = config.build_domain_xml(INST, "/i/disk", virt_type="qemu")
    other = dict(INST, uuid="1b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a")
    kept = config.build_domain_xml(other, "/j/disk", virt_type="qemu")
    doms = [_VanishingDomain(xml, "state"), _VanishingDomain(xml, "xml"),
            _VanishingDomain(kept, None)]
    fake = types.SimpleNamespace(host=types.SimpleNamespace(list_domains=lambda: doms))
    got = LibvirtDriver.list_managed_domains(fake)
    assert list(got) == [other["uuid"]]
