"""The config drive's files from an instance record: pure functions, bytes out.

Deterministic: the same record gives the same bytes (JSON with sorted keys and a fixed
indent, no timestamps), so a destination host can rebuild the drive from its record
and compare digests. The lab guest's parser relies on this exact layout: one
``"key": value`` pair per line.
"""
import ipaddress
import json

META_DATA = "openstack/latest/meta_data.json"
NETWORK_DATA = "openstack/latest/network_data.json"
USER_DATA = "openstack/latest/user_data"
FILES = (META_DATA, NETWORK_DATA, USER_DATA)


def _dump(obj):
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode()


def _hostname(name):
    out = "".join(c if c.isalnum() or c == "-" else "-" for c in name.lower())
    out = out.strip("-")[:63]
    return out or "instance"


def meta_data(instance):
    return {
        "uuid": instance["uuid"],
        "name": instance["name"],
        "hostname": _hostname(instance["name"]),
        "launch_index": 0,
        "meta": dict(instance.get("metadata") or {}),
        "public_keys": {},
        "files": [],
    }


def _subnet_of(ip, subnets):
    for s in subnets:
        net = ipaddress.ip_network(s["cidr"])
        if net.version == ip.version and ip in net:
            return net, s.get("gateway")
    return None, None


def network_data(instance):
    """``network_data.json`` as a dict: one link per VIF (by MAC), one network entry
    per fixed IP (IPv4 and IPv6). An address inside one of the VIF's ``subnets`` gets
    that subnet's netmask (and its gateway as default route); any other address is a
    host address (/32, /128)."""
    links, networks = [], []
    for i, vif in enumerate(instance.get("networks") or []):
        link_id = "tap%d" % i
        links.append({"id": link_id, "type": "phy",
                      "ethernet_mac_address": vif["mac"].lower(), "mtu": None,
                      "vif_id": vif["id"]})
        for ip_text in vif.get("fixed_ips") or []:
            ip = ipaddress.ip_address(ip_text)
            net, gateway = _subnet_of(ip, vif.get("subnets") or [])
            if net is None:
                net = ipaddress.ip_network("%s/%d" % (ip, ip.max_prefixlen))
            routes = []
            if gateway:
                any_ = "0.0.0.0" if ip.version == 4 else "::"
                routes.append({"network": any_, "netmask": any_, "gateway": gateway})
            networks.append({
                "id": "network%d" % len(networks), "link": link_id,
                "type": "ipv4" if ip.version == 4 else "ipv6",
                "ip_address": str(ip), "netmask": str(net.netmask),
                "prefix": net.prefixlen, "routes": routes, "network_id": vif["id"]})
    return {"links": links, "networks": networks, "services": []}


def drive_files(instance, user_data=None):
    """{path on the drive: bytes} for ``instance`` (a record or a validated spawn
    payload); ``user_data`` is the decoded bytes or None."""
    files = {META_DATA: _dump(meta_data(instance)),
             NETWORK_DATA: _dump(network_data(instance))}
    if user_data is not None:
        files[USER_DATA] = bytes(user_data)
    return files
