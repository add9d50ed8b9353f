"""Names, addresses, ports and paths of the lab (machine-wide: one lab at a time)."""
import os

from computeagent.lab.errors import LabError

DEFAULT_LAB_DIR = "/var/lib/computeagent-lab"
STATE_VERSION = 1

BRIDGE = "calab0"
# The lab's /24: the first of the RFC 5737 documentation ranges that does not collide
# with the machine's own addresses and routes (some machines have their uplink in
# 192.0.2.0/24!), or $COMPUTEAGENT_LAB_SUBNET.  The bridge is <prefix>.1, host i is
# <prefix>.(10+i).  Always take addresses from lab.json / the Lab API.
SUBNET_CANDIDATES = ["192.0.2", "198.51.100", "203.0.113"]
PREFIXLEN = 24
HOST_BRIDGE = "br-lab"
NS_PREFIX = "calab-"
IMAGE_PORT = 8090
BROKER_PORT = 5673
BROKER_DIST_PORT = 25673
BROKER_EPMD_PORT = 24369
BROKER_NODE = "calab@localhost"
BROKER_USER = "computeagent"
LIBVIRT_TCP_PORT = 16509
MAX_HOSTS = 26
# Names, addresses and ports of the lab are machine-wide: one lab at a time.  This file
# (on tmpfs, like the network namespaces) names the lab dir whose lab is up.
OWNER_FILE = "/run/computeagent-lab.owner"

# Inside every host the agent's files are at this one path (each host sees its own).
AGENT_ROOT = "/var/lib/computeagent"
INSTANCES_PATH = AGENT_ROOT + "/instances"
STATE_PATH = AGENT_ROOT + "/state"

# Mount points of the per-host bind mounts; they must exist in the root file system.
MOUNT_POINTS = ["/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt", AGENT_ROOT]

LIBVIRT_QEMU_UID = 64055  # Debian's usual uid/gid of libvirt-qemu

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
HOST_INIT = os.path.join(PKG_DIR, "host-init.sh")
SUBREAPER_SRC = os.path.join(PKG_DIR, "subreaper.c")

REQUIRED_BINARIES = ["ip", "unshare", "nsenter", "taskset", "libvirtd", "virsh",
                     "qemu-system-x86_64", "mount", "hostname"]


def default_lab_dir():
    return os.environ.get("COMPUTEAGENT_LAB_DIR") or DEFAULT_LAB_DIR


def host_name(index):
    """1 -> 'hosta', 2 -> 'hostb', ..."""
    if not 1 <= index <= MAX_HOSTS:
        raise LabError(f"host index {index} out of range 1..{MAX_HOSTS}")
    return "host" + chr(ord("a") + index - 1)


def host_ip(index, prefix):
    return f"{prefix}.{10 + index}"
