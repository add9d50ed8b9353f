"""The lab's network: the choice of its /24, the bridge in the root namespace, and one
network namespace per host (veth to the bridge, eth0, lo and the guests' bridge)."""
import ipaddress
import json
import os
import signal

from computeagent.lab import procutil
from computeagent.lab.errors import LabError
from computeagent.lab.layout import BRIDGE, NS_PREFIX, PREFIXLEN, SUBNET_CANDIDATES
from computeagent.lab.layout import GUEST_BRIDGE_IP, GUEST_BRIDGE_IP6
from computeagent.lab.util import _run


def _subnet_conflicts(prefix):
    """Reasons why <prefix>.0/24 cannot be the lab's network in the root namespace
    (addresses and routes of the machine, the lab's own bridge excluded)."""
    net = ipaddress.ip_network(f"{prefix}.0/{PREFIXLEN}")
    reasons = []
    addrs = json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]")
    for link in addrs:
        if link.get("ifname") == BRIDGE:
            continue
        for a in link.get("addr_info", []):
            iface = ipaddress.ip_interface(f"{a['local']}/{a.get('prefixlen', 32)}")
            if iface.network.overlaps(net) and not iface.ip.is_loopback:
                reasons.append(f"address {iface} on {link.get('ifname')}")
    routes = json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout
                        or "[]")
    for r in routes:
        dst = r.get("dst")
        if not dst or dst == "default" or r.get("dev") == BRIDGE:
            continue
        if r.get("type") in ("local", "broadcast") or r.get("table") == "local":
            continue
        try:
            rnet = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        if rnet.overlaps(net):
            reasons.append(f"route {dst} dev {r.get('dev')}")
        gw = r.get("gateway")
        if gw and ipaddress.ip_address(gw) in net:
            reasons.append(f"gateway {gw}")
    for r in routes:
        gw = r.get("gateway")
        if r.get("dst") == "default" and gw and ipaddress.ip_address(gw) in net:
            reasons.append(f"default gateway {gw}")
    return reasons


def choose_subnet():
    """The lab's /24 prefix, e.g. "198.51.100" (see SUBNET_CANDIDATES)."""
    wanted = os.environ.get("COMPUTEAGENT_LAB_SUBNET")
    if wanted:
        net = ipaddress.ip_network(wanted if "/" in wanted else wanted.rstrip(".") + ".0/24",
                                   strict=False)
        if net.prefixlen != PREFIXLEN:
            raise LabError("COMPUTEAGENT_LAB_SUBNET must be a /24")
        prefix = str(net.network_address).rsplit(".", 1)[0]
        conflicts = _subnet_conflicts(prefix)
        if conflicts:
            raise LabError(f"COMPUTEAGENT_LAB_SUBNET {net} collides with the machine's "
                           f"network: {', '.join(conflicts)}")
        return prefix
    tried = []
    for prefix in SUBNET_CANDIDATES:
        conflicts = _subnet_conflicts(prefix)
        if not conflicts:
            return prefix
        tried.append(f"{prefix}.0/24 ({', '.join(conflicts)})")
    raise LabError("no free subnet for the lab: " + "; ".join(tried)
                   + "; set COMPUTEAGENT_LAB_SUBNET")


class NetworkMixin:
    """Setting up and tearing down the lab's network (part of :class:`Lab`)."""

    def _setup_network(self):
        net = self.state["network"]
        root = [f"link add {BRIDGE} type bridge",
                f"link set {BRIDGE} type bridge forward_delay 0",
                f"addr add {net['gateway']}/{PREFIXLEN} dev {BRIDGE}",
                f"link set {BRIDGE} up"]
        for name in self.host_names:
            h = self.host(name)
            root += [f"netns add {h['netns']}",
                     f"link add {h['veth']} type veth peer name eth0 netns {h['netns']}",
                     f"link set {h['veth']} master {BRIDGE} up"]
        _run(["ip", "-batch", "-"], input="\n".join(root) + "\n")
        for name in self.host_names:
            h = self.host(name)
            cmds = [f"addr add {h['ip']}/{PREFIXLEN} dev eth0",
                    "link set eth0 up",
                    "link set lo up",
                    f"link add {net['host_bridge']} type bridge",
                    f"link set {net['host_bridge']} type bridge forward_delay 0",
                    f"link set {net['host_bridge']} up",
                    # the guests' peer for real packets (issue 13)
                    f"addr add {GUEST_BRIDGE_IP}/24 dev {net['host_bridge']}",
                    f"addr add {GUEST_BRIDGE_IP6}/64 dev {net['host_bridge']} nodad"]
            _run(["ip", "-n", h["netns"], "-batch", "-"], input="\n".join(cmds) + "\n")
            h["net_ns"] = procutil.ns_inode(f"/run/netns/{h['netns']}")

    def _teardown_network(self, hosts):
        netns = set()
        for h in hosts.values():
            netns.add(h.get("netns"))
        # also what a lab that lost its lab.json may have left
        res = _run(["ip", "netns", "list"], check=False)
        for line in (res.stdout or "").splitlines():
            ns = line.split()[0] if line.split() else ""
            if ns.startswith(NS_PREFIX):
                netns.add(ns)
        netns.discard(None)
        for ns in sorted(netns):
            ino = procutil.ns_inode(f"/run/netns/{ns}")
            if ino:
                procutil.terminate(procutil.pids_in_namespaces(net_ino=ino),
                                   timeout=2.0, sig=signal.SIGKILL)
            _run(["ip", "link", "del", ns[:15]], check=False)
            _run(["ip", "netns", "del", ns], check=False)
        res = _run(["ip", "-o", "link", "show"], check=False)
        for line in (res.stdout or "").splitlines():
            parts = line.split(":")
            if len(parts) > 1:
                ifname = parts[1].strip().split("@")[0]
                if ifname.startswith(NS_PREFIX) or ifname == BRIDGE:
                    _run(["ip", "link", "del", ifname], check=False)
