"""Validation of RPC payloads at the edge. Everything the scheduler sends passes
through here before the manager sees it; failures raise ``InvalidInput`` with a
message that names the field."""
import base64
import datetime
import ipaddress
from typing import Any

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
        # 1.4: the subnets of the VIF (netmask and gateway of its fixed IPs on the
        # config drive; an address in none of them is a host address there).
        "subnets": {"type": "array", "maxItems": 16, "items": {
            "type": "object", "required": ["cidr"], "additionalProperties": False,
            "properties": {"cidr": {"type": "string", "maxLength": 49},
                           "gateway": {"type": "string", "maxLength": 45}}}},
    },
}

# 1.4: metadata keys are identifiers, values printable text (no NUL or other control
# characters but tab and newline); they reach the guest in meta_data.json.
METADATA = {"type": "object", "maxProperties": 128,
            "propertyNames": {"pattern": r"^[^\x00-\x1f\x7f/\\]{1,255}$"},
            "additionalProperties": {"type": "string", "maxLength": 4096,
                                     "pattern": r"^[^\x00-\x08\x0b-\x1f\x7f]*$"}}
# 1.4: user data, base64 as in nova (at most 65535 bytes once decoded).
USER_DATA_MAX_BYTES = 65535

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
        "metadata": METADATA,
        "config_drive": {"type": "boolean"},
        "user_data": {"type": ["string", "null"], "maxLength": 4 * 65536 // 3 + 4},
    },
}


_VALIDATORS: dict[int, tuple[dict, Any]] = {}


def _validator(schema):
    """One validator per schema, its schema checked once (``jsonschema.validate``
    re-checks the schema on every call: 8-10 ms per payload)."""
    held = _VALIDATORS.get(id(schema))
    if held is None or held[0] is not schema:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        held = _VALIDATORS[id(schema)] = (schema, cls(schema))
    return held[1]


def _check(schema, value, what):
    try:
        # what jsonschema.validate raises, without its per-call schema check
        error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(value))
        if error is not None:
            raise error
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or what
        msg = e.message
        if len(msg) > 200:     # a huge value: say which limit, not the value
            msg = "value fails %s %s" % (e.validator, str(e.validator_value)[:100])
        raise exception.InvalidInput(reason="%s: %s" % (where, msg))


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
        if "subnets" in net:
            net["subnets"] = [validate_subnet(sn, "%s/subnets/%d" % (where, j))
                              for j, sn in enumerate(net["subnets"])]
        nets.append(net)
    inst["networks"] = nets
    inst["metadata"] = dict(inst.get("metadata") or {})
    if inst.get("user_data") is not None:
        decode_user_data(inst["user_data"])
    if inst.get("user_data") is not None and not inst.get("config_drive", True):
        raise exception.InvalidInput(reason="user_data needs config_drive")
    return inst


MAX_CACHE_IMAGES = 64


def validate_image(image, where="image"):
    """Validate an image dict (as in spawn); return a normalised copy."""
    _check(IMAGE, image, where)
    img = dict(image)
    if len(img["hash"]) != _HEX[img["hash_algo"]]:
        raise exception.InvalidInput(reason="%s/hash: wrong length for %s"
                                     % (where, img["hash_algo"]))
    img["hash"] = img["hash"].lower()
    return img


def validate_cache_images(images, pin_until=None):
    """cache_images payload -> (list of normalised images, naive UTC datetime or
    None). Duplicate image ids are refused (one download per image)."""
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_CACHE_IMAGES:
        raise exception.InvalidInput(
            reason="images must be a list of 1-%d images" % MAX_CACHE_IMAGES)
    out, seen = [], set()
    for i, image in enumerate(images):
        img = validate_image(image, "images/%d" % i)
        if img["id"] in seen:
            raise exception.InvalidInput(reason="images/%d: duplicate image id" % i)
        seen.add(img["id"])
        out.append(img)
    pin = None
    if pin_until is not None:
        try:
            if not isinstance(pin_until, str) or not pin_until.endswith("Z"):
                raise ValueError
            pin = datetime.datetime.strptime(pin_until, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise exception.InvalidInput(
                reason="pin_until must be a UTC time YYYY-MM-DDTHH:MM:SSZ, not %r"
                % (str(pin_until)[:40],))
    return out, pin
def validate_subnet(subnet, where="subnet"):
    try:
        net = ipaddress.ip_network(subnet["cidr"])
    except ValueError:
        raise exception.InvalidInput(reason="%s/cidr: %r is not a network address"
                                     % (where, subnet["cidr"][:64]))
    out = {"cidr": str(net)}
    if subnet.get("gateway") is not None:
        gw = ipaddress.ip_address(validate_ip(subnet["gateway"], where + "/gateway"))
        if gw not in net:
            raise exception.InvalidInput(reason="%s/gateway: %s is not in %s"
                                         % (where, gw, net))
        out["gateway"] = str(gw)
    return out


def decode_user_data(text):
    """The bytes of base64 ``user_data`` (strict alphabet, at most 65535 bytes)."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise exception.InvalidInput(reason="user_data: not valid base64")
    if len(data) > USER_DATA_MAX_BYTES:
        raise exception.InvalidInput(reason="user_data: %d bytes decoded, at most %d"
                                     % (len(data), USER_DATA_MAX_BYTES))
    return data


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


def host_names(values, what="hosts", max_items=16):
    """None or a list of host names -> list."""
    if values is None:
        return []
    if not isinstance(values, list) or len(values) > max_items:
        raise exception.InvalidInput(reason="%s must be a list of at most %d host "
                                            "names" % (what, max_items))
    return [host_name(v, "%s/%d" % (what, i)) for i, v in enumerate(values)]


def host_name(value, what="dest_host"):
    if not isinstance(value, str) or not (1 <= len(value) <= 255) or \
            not all(c.isalnum() or c in "-_." for c in value):
        raise exception.InvalidInput(reason="%s must be a host name" % what)
    return value
