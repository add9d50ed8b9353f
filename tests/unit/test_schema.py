"""Payload validation at the RPC edge."""
import copy

import pytest

from computeagent import exception
from computeagent.rpc import schema

GOOD = {
    "uuid": "0b6b2c4e-1d5a-4b8e-9b7c-2f1e3d4c5b6a",
    "name": "web-1",
    "flavor": {"name": "m1.tiny", "vcpus": 1, "memory_mb": 96, "root_gb": 1},
    "image": {"id": "img-1", "url": "http://192.0.2.1:8090/base.raw",
              "disk_format": "raw", "size": 1024, "hash_algo": "sha256",
              "hash": "a" * 64},
    "networks": [{"id": "net1", "bridge": "br-lab", "mac": "52:54:00:12:34:56",
                  "fixed_ips": ["10.0.0.5", "10.0.0.6", "fd00::5"]}],
    "metadata": {"k": "v"},
}
BRIDGES = ["br-lab"]


def mutate(path, value):
    inst = copy.deepcopy(GOOD)
    cur = inst
    for p in path[:-1]:
        cur = cur[p]
    if value is KeyError:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return inst


def test_good_payload_is_normalised():
    out = schema.validate_instance(copy.deepcopy(GOOD), BRIDGES)
    assert out["networks"][0]["fixed_ips"] == ["10.0.0.5", "10.0.0.6", "fd00::5"]
    assert out["metadata"] == {"k": "v"}


@pytest.mark.parametrize("path,value,fragment", [
    (("uuid",), "../../etc/passwd", "uuid"),
    (("uuid",), "0B6B2C4E-1D5A-4B8E-9B7C-2F1E3D4C5B6A", "uuid"),
    (("name",), 42, "name"),
    (("name",), KeyError, "name"),
    (("flavor", "vcpus"), "1", "vcpus"),
    (("flavor", "vcpus"), True, "vcpus"),
    (("flavor", "memory_mb"), -1, "memory_mb"),
    (("flavor", "root_gb"), 0, "root_gb"),
    (("image", "size"), -5, "size"),
    (("image", "disk_format"), "vmdk", "disk_format"),
    (("image", "url"), "ftp://x/y", "url"),
    (("image", "hash"), "zz", "hash"),
    (("image", "hash"), "a" * 63, "hash"),
    (("networks", 0, "mac"), "52:54:00:12:34", "mac"),
    (("networks", 0, "mac"), "01:00:5e:00:00:01", "multicast"),
    (("networks", 0, "fixed_ips"), ["10.0.0.300"], "not an IP"),
    (("networks", 0, "fixed_ips"), ["10.0.0.1/24"], "not an IP"),
    (("networks", 0, "fixed_ips"), ["224.0.0.1"], "cannot be a fixed IP"),
    (("networks", 0, "fixed_ips"), "10.0.0.5", "fixed_ips"),
    (("networks", 0, "bridge"), "br-other", "unknown network"),
    (("networks", 0, "bridge"), "br;rm -rf /", "bridge"),
    (("metadata",), {"k": 1}, "metadata"),
    (("extra",), 1, "Additional properties"),
])
def test_bad_payloads_are_refused_with_a_clear_reason(path, value, fragment):
    with pytest.raises(exception.InvalidInput) as e:
        schema.validate_instance(mutate(path, value), BRIDGES)
    assert fragment in str(e.value)


def test_not_an_object():
    with pytest.raises(exception.InvalidInput):
        schema.validate_instance(["x"], BRIDGES)


@pytest.mark.parametrize("mid", ["", "a/b", "../x", "x" * 65, 5, None])
def test_migration_id(mid):
    with pytest.raises(exception.InvalidInput):
        schema.migration_id(mid)
