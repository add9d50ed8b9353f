"""Names, addresses, ports and paths of the lab.

One lab per *slot*: ``$COMPUTEAGENT_LAB_SLOT`` (0 by default, at most 9) picks the lab's
names, ports, subnet and lock, so that several labs (a developer's worktrees, say) can run
side by side on one machine.  Slot 0 keeps the historical names."""
import os

from computeagent.lab.errors import LabError


def lab_slot():
    raw = os.environ.get("COMPUTEAGENT_LAB_SLOT", "") or "0"
    if not raw.isdigit() or not 0 <= int(raw) <= 9:
        raise LabError(f"COMPUTEAGENT_LAB_SLOT must be 0..9, not {raw!r}")
    return int(raw)


SLOT = lab_slot()
_SFX = "" if SLOT == 0 else str(SLOT)

DEFAULT_LAB_DIR = "/var/lib/computeagent-lab" + _SFX
STATE_VERSION = 1

BRIDGE = f"calab{SLOT}"
# The lab's /24: the first of the RFC 5737 documentation ranges that does not collide
# with the machine's own addresses and routes (some machines have their uplink in
# 192.0.2.0/24!), or $COMPUTEAGENT_LAB_SUBNET.  The bridge is <prefix>.1, host i is
# <prefix>.(10+i).  Always take addresses from lab.json / the Lab API.
# Slots 1..9 take 198.18.<slot>.0/24 (RFC 2544 benchmarking range, never routed).
SUBNET_CANDIDATES = (["192.0.2", "198.51.100", "203.0.113"] if SLOT == 0
                     else [f"198.18.{SLOT}", f"198.19.{SLOT}"])
PREFIXLEN = 24
HOST_BRIDGE = "br-lab"
# The guests' network on every host's br-lab (issue 13): each host namespace's br-lab
# has the same address, the guests' peer for real packets (RFC 2544 / RFC 3849 ranges).
GUEST_PREFIX = f"198.19.{200 + SLOT}"
GUEST_CIDR = f"{GUEST_PREFIX}.0/24"
GUEST_BRIDGE_IP = f"{GUEST_PREFIX}.1"
GUEST_CIDR6 = f"2001:db8:{200 + SLOT:x}::/64"
GUEST_BRIDGE_IP6 = f"2001:db8:{200 + SLOT:x}::1"
NS_PREFIX = f"calab{_SFX}-"
IMAGE_PORT = 8090 + SLOT
BROKER_PORT = 5673 + 10 * SLOT
BROKER_DIST_PORT = 25673 + 10 * SLOT
BROKER_EPMD_PORT = 24369 + 10 * SLOT
BROKER_NODE = f"calab{_SFX}@localhost"
BROKER_USER = "computeagent"
LIBVIRT_TCP_PORT = 16509
LIBVIRT_TLS_PORT = 16514
MAX_HOSTS = 26
# Names, addresses and ports are machine-wide per slot: one lab per slot.  This file
# (on tmpfs, like the network namespaces) names the lab dir whose lab is up.
OWNER_FILE = f"/run/computeagent-lab{_SFX}.owner"
# run-tests and run-lab-demo hold this lock (flock) for the whole run.
SESSION_LOCK = f"/tmp/computeagent-lab-session{_SFX}.lock"

# Inside every host the agent's files are at this one path (each host sees its own).
AGENT_ROOT = "/var/lib/computeagent"
INSTANCES_PATH = AGENT_ROOT + "/instances"
STATE_PATH = AGENT_ROOT + "/state"

# Mount points of the per-host bind mounts; they must exist in the root file system.
MOUNT_POINTS = ["/etc/libvirt", "/etc/pki", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt", AGENT_ROOT]

LIBVIRT_QEMU_UID = 64055  # Debian's usual uid/gid of libvirt-qemu

PKG_DIR = os.path.dirname(os.path.abspath(__file__))
HOST_INIT = os.path.join(PKG_DIR, "host-init.sh")
SUBREAPER_SRC = os.path.join(PKG_DIR, "subreaper.c")
QEMU_RAM_PAD_SRC = os.path.join(PKG_DIR, "qemu-tcg-ram-pad.sh")
# Where each host mounts the real QEMU under the wrapper. One level below /usr, as
# /usr/bin is: QEMU finds its modules and firmware relative to its own directory
# (../lib/..., ../share/qemu), so a binary run from elsewhere starts without them.
QEMU_REAL_MOUNT = "/usr/libexec/computeagent-lab-qemu-system-x86_64"

REQUIRED_BINARIES = ["openssl", "ip", "unshare", "nsenter", "taskset", "libvirtd", "virsh",
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
