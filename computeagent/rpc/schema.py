"""Validation of RPC payloads at the edge. Everything the scheduler sends passes
through here before the manager sees it; failures raise ``InvalidInput`` with a
message that names the field."""
import ipaddress

import jsonschema

from computeagent import exception
from computeagent import utils

_HEX = {"sha256": 64, "sha512": 128}

_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_ID = {"type": "string", "minLength": 1, "maxLength": 255}
_UUID = {"type": "string",
         "pattern": r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}

FLAVOR = {
    "type": "object",
    "required": ["name", "vcpus", "memory_mb", "root_gb"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "vcpus": {"type": "integer", "minimum": 1, "maximum": 256},
        "memory_mb": {"type": "integer", "minimum": 16, "maximum": 4 * 1024 * 1024},
        "root_gb": {"type": "integer", "minimum": 1, "maximum": 65536},
    },
}

IMAGE = {
    "type": "object",
    "required": ["id", "url", "disk_format", "size", "hash_algo", "hash"],
    "additionalProperties": False,
    "properties": {
        "id": _ID,
        "url": {"type": "string", "maxLength": 4096,
                "pattern": r"^(https?|file)://[^\s]+$"},
        "disk_format": {"enum": ["raw", "qcow2"]},
        "size": {"type": "integer", "minimum": 1},
        "hash_algo": {"enum": ["sha256", "sha512"]},
        "hash": {"type": "string", "pattern": r"^[0-9a-fA-F]+$"},
    },
}

NETWORK = {
    "type": "object",
    "required": ["id", "bridge", "mac", "fixed_ips"],
    "additionalProperties": False,
    "properties": {
        "id": _ID,
        "bridge": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,15}$"},
        "mac": {"type": "string",
                "pattern": r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$"},
        "fixed_ips": {"type": "array", "maxItems": 64, "uniqueItems": True,
                      "items": {"type": "string", "maxLength": 45}},
    },
}

INSTANCE = {
    "type": "object",
    "required": ["uuid", "name", "flavor", "image", "networks"],
    "additionalProperties": False,
    "properties": {
        "uuid": _UUID,
        "name": _NAME,
        "flavor": FLAVOR,
        "image": IMAGE,
        "networks": {"type": "array", "maxItems": 16, "items": NETWORK},
        "metadata": {"type": "object", "maxProperties": 128,
                     "additionalProperties": {"type": "string", "maxLength": 4096},
                     "propertyNames": {"maxLength": 255}},
    },
}


def _check(schema, value, what):
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or what
        raise exception.InvalidInput(reason="%s: %s" % (where, e.message[:300]))


def validate_ip(address, where="address"):
    if not isinstance(address, str):
        raise exception.InvalidInput(reason="%s: must be a string" % where)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise exception.InvalidInput(reason="%s: %r is not an IP address"
                                     % (where, address[:64]))
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback:
        raise exception.InvalidInput(reason="%s: %s cannot be a fixed IP" % (where, ip))
    return str(ip)


def validate_mac(mac, where="mac"):
    first = int(mac.split(":")[0], 16)
    if first & 1:
        raise exception.InvalidInput(reason="%s: %s is a multicast MAC" % (where, mac))
    return mac.lower()


def validate_instance(instance, allowed_bridges):
    """Validate a spawn payload; return a normalised copy."""
    if not isinstance(instance, dict):
        raise exception.InvalidInput(reason="instance must be an object")
    _check(INSTANCE, instance, "instance")
    inst = {k: instance[k] for k in instance}
    img = dict(inst["image"])
    if len(img["hash"]) != _HEX[img["hash_algo"]]:
        raise exception.InvalidInput(reason="image/hash: wrong length for %s"
                                     % img["hash_algo"])
    img["hash"] = img["hash"].lower()
    inst["image"] = img
    nets, macs = [], set()
    for i, net in enumerate(inst["networks"]):
        net = dict(net)
        where = "networks/%d" % i
        if net["bridge"] not in allowed_bridges:
            raise exception.InvalidInput(
                reason="%s: unknown network %r (bridge %r is not allowed on this host)"
                % (where, net["id"][:64], net["bridge"]))
        net["mac"] = validate_mac(net["mac"], where + "/mac")
        if net["mac"] in macs:
            raise exception.InvalidInput(reason="%s/mac: duplicate MAC" % where)
        macs.add(net["mac"])
        net["fixed_ips"] = [validate_ip(a, "%s/fixed_ips/%d" % (where, j))
                            for j, a in enumerate(net["fixed_ips"])]
        nets.append(net)
    inst["networks"] = nets
    inst["metadata"] = dict(inst.get("metadata") or {})
    return inst


def validate_flavor(flavor):
    _check(FLAVOR, flavor, "flavor")
    return dict(flavor)


def uuid_of(value, what="instance_uuid"):
    return utils.validate_uuid(value, what)


def migration_id(value):
    if not isinstance(value, str) or not (1 <= len(value) <= 64) or \
            not all(c.isalnum() or c in "-_." for c in value):
        raise exception.InvalidInput(
            reason="migration_id must be 1-64 characters of [A-Za-z0-9._-]")
    return value


def host_name(value, what="dest_host"):
    if not isinstance(value, str) or not (1 <= len(value) <= 255) or \
            not all(c.isalnum() or c in "-_." for c in value):
        raise exception.InvalidInput(reason="%s must be a host name" % what)
    return value
