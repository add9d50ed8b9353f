"""Instance commands: spawn, show, list, stop, start, reboot, delete, add-ip, remove-ip.

Casts are fire-and-forget on the bus (a cast to a host nobody serves is silently
dropped), so each cast command first makes a call to that host: an absent agent is
exit 3 before anything is sent, an unknown instance exit 1."""
import json
import uuid as uuidlib

from computeagent import exception
from computeagent.cli import base

INSTANCE_COLUMNS = ("uuid", "name", "state", "task_state", "power_state", "host")


def parse_network(text):
    """``id=net1,bridge=br-lab,mac=52:54:00:..,ips=10.0.0.5;10.0.0.6``"""
    net: dict = {"fixed_ips": []}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k == "ips":
            net["fixed_ips"] = [a for a in v.split(";") if a]
        else:
            net[k] = v
    return net


def get_or_none(cmd, uuid):
    try:
        return cmd.call("get_instance", uuid)
    except exception.InstanceNotFound:
        return None


def settled(inst):
    return inst["task_state"] is None and inst["state"] != "BUILDING"


def wait_instance(cmd, parsed_args, uuid, done, what):
    return base.Waiter(cmd, parsed_args, lambda: get_or_none(cmd, uuid), done,
                       what).wait()


def _check_final(cmd, inst):
    if inst and (inst.get("state") == "ERROR"):
        cmd.fail_after_output("instance %s is in ERROR: %s" % (
            inst.get("uuid"), inst.get("fault")))


class Spawn(base.ShowCommand):
    """Create an instance on a host (cast); with --wait, until it is ACTIVE or ERROR."""

    def add_arguments(self, p):
        p.add_argument("--from-json", metavar="FILE",
                       help="file with the whole instance payload (other instance "
                            "options are then ignored)")
        p.add_argument("--uuid", help="instance UUID (default: a new one)")
        p.add_argument("--name", default="instance", help="display name")
        p.add_argument("--vcpus", type=int, default=1, help="virtual CPUs (default 1)")
        p.add_argument("--memory-mb", type=int, default=96,
                       help="memory in MiB (default 96)")
        p.add_argument("--root-gb", type=int, default=1,
                       help="root disk size in GiB (default 1)")
        p.add_argument("--flavor-name", default="custom",
                       help="flavor name recorded with the instance")
        p.add_argument("--image-id", help="image id (names the cached base file)")
        p.add_argument("--image-url", help="http(s):// or file:// URL of the image")
        p.add_argument("--image-format", default="raw", choices=["raw", "qcow2"],
                       help="format the image must have (checked; default raw)")
        p.add_argument("--image-size", type=int, help="image size in bytes (checked)")
        p.add_argument("--image-sha256", help="image sha256 (checked)")
        p.add_argument("--network", action="append", default=[],
                       metavar="id=ID,bridge=BR,mac=MAC,ips=IP1;IP2",
                       help="a virtual interface; repeat for several")
        base.add_wait_arguments(p, "the instance is ACTIVE (or ERROR)")

    def record(self, a):
        if a.from_json:
            try:
                with open(a.from_json) as f:
                    inst = json.load(f)
            except (OSError, ValueError) as e:
                raise base.Failed("cannot read %s: %s" % (a.from_json, e))
        else:
            inst = {"uuid": a.uuid or str(uuidlib.uuid4()), "name": a.name,
                    "flavor": {"name": a.flavor_name, "vcpus": a.vcpus,
                               "memory_mb": a.memory_mb, "root_gb": a.root_gb},
                    "image": {"id": a.image_id, "url": a.image_url,
                              "disk_format": a.image_format, "size": a.image_size,
                              "hash_algo": "sha256", "hash": a.image_sha256},
                    "networks": [parse_network(n) for n in a.network],
                    "metadata": {}}
        self.call("get_host_status")          # reachable before the cast
        self.call("spawn", inst)
        if not a.wait:
            return {"uuid": inst.get("uuid"), "request_id": self.ctxt["request_id"],
                    "sent": "spawn"}
        got = wait_instance(self, a, inst.get("uuid"), settled,
                            "instance %s" % inst.get("uuid"))
        _check_final(self, got)
        return got


class Show(base.ShowCommand):
    """Show one instance as its host records it (state, power, disk, networks)."""

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")

    def record(self, a):
        return self.call("get_instance", a.uuid)


class List(base.ListCommand):
    """List the instances a host knows."""

    COLUMNS = INSTANCE_COLUMNS

    def rows(self, a):
        return self.call("list_instances")


class _Power(base.ShowCommand):
    """Base of stop/start/reboot/delete."""

    action = ""

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")
        base.add_wait_arguments(p, "the %s is over" % self.action)

    def record(self, a):
        before = self.call("get_instance", a.uuid)   # InstanceNotFound: exit 1
        self.call(self.action, a.uuid)
        if not a.wait:
            return {"uuid": a.uuid, "request_id": self.ctxt["request_id"],
                    "sent": self.action, "state_before": before.get("state")}
        if self.action == "delete":
            self._wait_gone(a)
            return {"uuid": a.uuid, "state": "DELETED"}
        got = wait_instance(self, a, a.uuid, lambda i: i["task_state"] is None,
                            "instance %s" % a.uuid)
        _check_final(self, got)
        return got

    def _wait_gone(self, a):
        base.Waiter(self, a, lambda: {"gone": get_or_none(self, a.uuid) is None},
                    lambda r: r["gone"], "the delete of %s" % a.uuid).wait()


class Stop(_Power):
    """Power an instance off (graceful, then forced after [libvirt] shutdown_timeout)."""
    action = "stop"


class Start(_Power):
    """Power an instance on."""
    action = "start"


class Reboot(_Power):
    """Reboot an instance."""
    action = "reboot"


class Delete(_Power):
    """Delete an instance: domain, disks, record."""
    action = "delete"


class _FixedIp(base.ShowCommand):
    adding = True

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")
        p.add_argument("network_id", help="id of the instance's network (its vif)")
        p.add_argument("address", help="the fixed IP address")
        base.add_wait_arguments(p, "the address is %s" % (
            "on the interface" if self.adding else "gone from the interface"))

    def record(self, a):
        self.call("get_instance", a.uuid)
        self.call("add_fixed_ip" if self.adding else "remove_fixed_ip",
                  a.uuid, a.network_id, a.address)
        if not a.wait:
            return {"uuid": a.uuid, "request_id": self.ctxt["request_id"],
                    "sent": self.cmd_name, "address": a.address}

        def done(i):
            has = any(a.address in n.get("fixed_ips", []) for n in i.get("networks", []))
            return has == self.adding and i["task_state"] is None
        got = wait_instance(self, a, a.uuid, done, "address %s on %s" % (a.address,
                                                                           a.uuid))
        _check_final(self, got)
        return got


class AddIp(_FixedIp):
    """Add a fixed IP to an instance's interface (the nwfilter lets it pass at once)."""
    adding = True


class RemoveIp(_FixedIp):
    """Remove a fixed IP from an instance's interface."""
    adding = False


COMMANDS = {
    "spawn": Spawn, "show": Show, "list": List, "stop": Stop, "start": Start,
    "reboot": Reboot, "delete": Delete, "add-ip": AddIp, "remove-ip": RemoveIp,
}
