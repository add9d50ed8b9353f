"""Domain XML, built and parsed with ElementTree (never string formatting).

Untrusted text (names, metadata) only ever becomes element text or attribute
values, which ElementTree escapes.
"""
import json
import xml.etree.ElementTree as ET

from computeagent import utils

META_NS = "urn:computeagent:instance:1"
ET.register_namespace("ca", META_NS)


def domain_name(uuid):
    return "instance-%s" % uuid


def _sub(parent, tag, text=None, **attrs):
    el = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        el.text = str(text)
    return el


def interface_element(vif, nwfilter="clean-traffic"):
    """``<interface>`` for one VIF; every fixed IP becomes one IP parameter."""
    iface = ET.Element("interface", {"type": "bridge"})
    _sub(iface, "mac", address=vif["mac"])
    _sub(iface, "source", bridge=vif["bridge"])
    _sub(iface, "model", type="virtio")
    if nwfilter:
        ref = _sub(iface, "filterref", filter=nwfilter)
        for ip in vif.get("fixed_ips", []):
            _sub(ref, "parameter", name="IPV6" if ":" in ip else "IP", value=ip)
    return iface


def interface_xml(vif, nwfilter="clean-traffic"):
    return ET.tostring(interface_element(vif, nwfilter), encoding="unicode")


CONFIG_DRIVE_TARGET = "sda"


def config_drive_element(path):
    """The config drive: a read-only SCSI cdrom (on the virtio-scsi controller) whose
    medium is ``path``; ``path=None`` is the empty tray (an eject)."""
    disk = ET.Element("disk", {"type": "file", "device": "cdrom"})
    _sub(disk, "driver", name="qemu", type="raw")
    if path:
        _sub(disk, "source", file=path)
    _sub(disk, "target", dev=CONFIG_DRIVE_TARGET, bus="scsi")
    _sub(disk, "readonly")
    return disk


def config_drive_xml(path):
    return ET.tostring(config_drive_element(path), encoding="unicode")


def build_domain_xml(instance, disk_path, virt_type="kvm", console_log=None,
                     kernel=None, initrd=None, cmdline=None,
                     nwfilter="clean-traffic", host=None, config_drive=None):
    """Return the persistent domain XML for ``instance`` (a dict as stored)."""
    flavor = instance["flavor"]
    dom = ET.Element("domain", {"type": virt_type})
    _sub(dom, "name", domain_name(instance["uuid"]))
    _sub(dom, "uuid", instance["uuid"])
    meta = _sub(dom, "metadata")
    ca = ET.SubElement(meta, "{%s}instance" % META_NS)
    _sub(ca, "{%s}name" % META_NS, instance["name"])
    _sub(ca, "{%s}owner-host" % META_NS, host or "")
    _sub(ca, "{%s}flavor" % META_NS, json.dumps(flavor, sort_keys=True))
    # never the URL's credentials: the domain XML is readable by every libvirt client
    _sub(ca, "{%s}image" % META_NS, json.dumps(utils.public_image(
        instance.get("image", {})), sort_keys=True))
    _sub(ca, "{%s}networks" % META_NS, json.dumps(instance.get("networks", []),
                                                   sort_keys=True))
    _sub(ca, "{%s}metadata" % META_NS, json.dumps(instance.get("metadata", {}),
                                                   sort_keys=True))
    _sub(dom, "memory", int(flavor["memory_mb"]) * 1024, unit="KiB")
    _sub(dom, "currentMemory", int(flavor["memory_mb"]) * 1024, unit="KiB")
    _sub(dom, "vcpu", int(flavor["vcpus"]), placement="static")
    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch="x86_64")
    if kernel:
        _sub(os_el, "kernel", kernel)
        if initrd:
            _sub(os_el, "initrd", initrd)
        if cmdline:
            _sub(os_el, "cmdline", cmdline)
    else:
        _sub(os_el, "boot", dev="hd")
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")
    devices = _sub(dom, "devices")
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", cache="none")
    _sub(disk, "source", file=disk_path)
    _sub(disk, "target", dev="vda", bus="virtio")
    if config_drive:
        _sub(devices, "controller", type="scsi", index="0", model="virtio-scsi")
        devices.append(config_drive_element(config_drive))
    for vif in instance.get("networks", []):
        devices.append(interface_element(vif, nwfilter))
    if console_log:
        serial = _sub(devices, "serial", type="file")
        _sub(serial, "source", path=console_log, append="on")
        _sub(serial, "target", port="0")
        console = _sub(devices, "console", type="file")
        _sub(console, "source", path=console_log, append="on")
        _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


def parse_domain(xml):
    """Facts the agent needs back from a domain XML."""
    root = ET.fromstring(xml)
    out = {"uuid": root.findtext("uuid"), "name": root.findtext("name"),
           "disk_path": None, "interfaces": [], "instance": None}
    src = root.find("./devices/disk[@device='disk']/source")
    if src is not None:
        out["disk_path"] = src.get("file")
    cd = root.find("./devices/disk[@device='cdrom']/source")
    out["config_drive"] = cd.get("file") if cd is not None else None
    for iface in root.findall("./devices/interface"):
        mac = iface.find("mac")
        ref = iface.find("filterref")
        out["interfaces"].append({
            "mac": mac.get("address") if mac is not None else None,
            "bridge": (iface.find("source").get("bridge")
                       if iface.find("source") is not None else None),
            "fixed_ips": ([p.get("value") for p in ref.findall("parameter")
                           if p.get("name") in ("IP", "IPV6")]
                          if ref is not None else []),
        })
    ca = root.find("./metadata/{%s}instance" % META_NS)
    if ca is not None:
        def j(tag, default):
            t = ca.findtext("{%s}%s" % (META_NS, tag))
            return json.loads(t) if t else default
        out["instance"] = {
            "name": ca.findtext("{%s}name" % META_NS),
            "owner_host": ca.findtext("{%s}owner-host" % META_NS),
            "flavor": j("flavor", {}), "image": j("image", {}),
            "networks": j("networks", []), "metadata": j("metadata", {}),
        }
    return out
