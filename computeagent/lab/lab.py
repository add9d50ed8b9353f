"""A lab of real hypervisors on one machine: N libvirt/QEMU hosts, a RabbitMQ node and an
image HTTP server, for the functional tests and the demo.

Layout (all as root, on one machine; P is the lab's /24, 192.0.2 unless the machine
itself uses it -- then 198.51.100 or 203.0.113; see choose_subnet)::

    root namespace                              host "hosta" (netns calab-hosta, own mount
    bridge calab0 P.1/24                          and UTS namespaces, hostname hosta)
      |- RabbitMQ node calab@localhost            eth0 P.11/24  (veth <-> calab0)
      |    127.0.0.1:5673 and P.1:5673            br-lab (guest NICs)
      |- image server P.1:8090                    libvirtd --listen (tcp 16509)
      |- veth calab-hosta  ----------------------  /var/lib/computeagent = <hostdir>/agent
      |- veth calab-hostb  -----> host "hostb", P.12, ...

Inside every host, /etc/hosts names all hosts plus calab-broker and calab-images (P.1).

Every process is recorded in ``<lab dir>/lab.json`` by PID (with its start time, so a
reused PID is never signalled) and stopped by PID.  Nothing is ever killed by name.

Use::

    lab = Lab()                    # lab dir: $COMPUTEAGENT_LAB_DIR or /var/lib/computeagent-lab
    lab.up(hosts=2, agents=False)  # idempotent: quick when already up and healthy
    lab.host_exec("hosta", ["virsh", "list"])
    lab.down()
"""
import configparser
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from computeagent.lab import broker as _broker
from computeagent.lab import procutil
from computeagent.lab.errors import LabError

LOG = logging.getLogger("computeagent.lab")

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


def _no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _run(argv, check=True, capture=True, input=None, timeout=60, **kw):
    try:
        return subprocess.run(argv, check=check, capture_output=capture, text=True,
                              input=input, timeout=timeout, **kw)
    except subprocess.CalledProcessError as exc:
        raise LabError(f"{' '.join(map(str, argv))} failed ({exc.returncode}): "
                       f"{(exc.stderr or '').strip()}") from exc


def _write(path, text, mode=None):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _libvirt():
    import libvirt  # noqa: delayed: the module needs the C library

    # The default handler prints every error on stderr (we poll while daemons start).
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt


class Lab:
    """The lab in ``lab_dir`` (default ``$COMPUTEAGENT_LAB_DIR`` or
    ``/var/lib/computeagent-lab``).  ``state`` is the content of ``lab.json``."""

    def __init__(self, lab_dir=None):
        self.lab_dir = os.path.abspath(lab_dir or default_lab_dir())
        self.state_file = os.path.join(self.lab_dir, "lab.json")
        self.lock_file = os.path.join(self.lab_dir, "lab.lock")
        self.state = {}
        self._rlock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd = None
        self._procs = {}  # pid -> Popen of processes this object started
        self._sig = None
        self.load()

    # ------------------------------------------------------------------ state ---
    def _file_sig(self):
        try:
            st = os.stat(self.state_file)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def load(self):
        """(Re)read lab.json; returns the state dict ({} when there is none)."""
        sig = self._file_sig()
        try:
            with open(self.state_file) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            self.state = {}
        except ValueError as exc:
            LOG.warning("unreadable %s (%s): treated as a crashed lab", self.state_file, exc)
            self.state = {"state": "corrupt"}
        self._sig = sig
        return self.state

    def _refresh(self):
        """Re-read lab.json if another Lab object or process changed it (e.g. a test's
        down/up while a session fixture holds its own Lab)."""
        if self._lock_depth == 0 and self._file_sig() != self._sig:
            self.load()

    def _save(self):
        os.makedirs(self.lab_dir, exist_ok=True)

        def clean(obj):
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items() if not k.startswith("_")}
            if isinstance(obj, list):
                return [clean(v) for v in obj]
            return obj

        _write(self.state_file, json.dumps(clean(self.state), indent=2, sort_keys=True) + "\n")
        self._sig = self._file_sig()

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive lock on the lab (between processes, re-entrant in this object)."""
        with self._rlock:
            if self._lock_depth == 0:
                os.makedirs(self.lab_dir, exist_ok=True)
                self._lock_fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                self.load()
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    os.close(self._lock_fd)
                    self._lock_fd = None

    # -------------------------------------------------------------- accessors ---
    @property
    def is_up(self):
        self._refresh()
        return self.state.get("state") == "up"

    @property
    def host_names(self):
        self._refresh()
        hosts = self.state.get("hosts") or {}
        return sorted(hosts, key=lambda n: hosts[n]["index"])

    def host(self, name):
        self._refresh()
        try:
            return self.state["hosts"][name]
        except KeyError:
            raise LabError(f"no lab host {name!r} (hosts: {self.host_names})") from None

    def host_ip(self, name):
        return self.host(name)["ip"]

    def host_dir(self, name):
        return self.host(name)["dir"]

    def host_path(self, name, path):
        """Root-namespace path of ``path`` as seen inside host ``name`` (for the paths
        the lab bind-mounts: /var/lib/computeagent, /run/libvirt, /var/lib/libvirt,
        /var/log/libvirt, /var/cache/libvirt, /etc/libvirt); other paths are shared."""
        h = self.host(name)
        path = os.path.normpath(path)
        for mp in MOUNT_POINTS:
            if path == mp or path.startswith(mp + "/"):
                src = h["agent_dir"] if mp == AGENT_ROOT else os.path.join(h["dir"], mp[1:])
                return src + path[len(mp):]
        return path

    def libvirt_uri(self, name):
        """URI of the host's libvirtd usable from the root namespace (unix socket)."""
        return self.host(name)["libvirt_uri"]

    def migration_uri(self, name):
        """URI of the host's libvirtd as seen from the other hosts (TCP)."""
        return self.host(name)["migration_uri"]

    def libvirt_connect(self, name):
        """A libvirt.virConnect to the host's libvirtd (from the root namespace)."""
        return _libvirt().open(self.libvirt_uri(name))

    def transport_url(self, from_root=True):
        b = self._broker_settings()
        return b["transport_url"] if from_root else b["transport_url_hosts"]

    @property
    def image_dir(self):
        """``<lab dir>/images``: files there are served by the image server."""
        return os.path.join(self.lab_dir, "images")

    images_dir = image_dir

    def image_url(self, filename):
        """URL of ``<lab dir>/images/<filename>``, valid from the root namespace and from
        every host (the image server listens on the bridge address)."""
        self._refresh()
        return self.state["images"]["base_url"] + filename.lstrip("/")

    # ---------------------------------------------------------- image server ---
    def _images_request(self, method, path, body=None, timeout=5):
        url = self.state["images"]["base_url"] + path.lstrip("/")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with _no_proxy_opener().open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def image_stats(self):
        """{"get": {"/<file>": n}, "head": {...}} since the last reset."""
        return self._images_request("GET", "_stats")

    def image_get_count(self, filename):
        """Number of GET requests for ``filename`` since the last reset."""
        return self.image_stats()["get"].get("/" + filename.lstrip("/"), 0)

    def reset_image_stats(self):
        self._images_request("POST", "_stats/reset", body={})

    def set_image_fault(self, filename, status=None, delay=None, truncate=None, rate=None):
        """Make the image server misbehave for ``filename``: reply ``status``, sleep
        ``delay`` s first, close after ``truncate`` body bytes, or serve at ``rate``
        bytes/s.  All None clears the fault of that file."""
        spec = {k: v for k, v in dict(status=status, delay=delay, truncate=truncate,
                                      rate=rate).items() if v is not None}
        self._images_request("POST", "_faults", body={"/" + filename.lstrip("/"): spec or None})

    def clear_image_faults(self):
        self._images_request("DELETE", "_faults")

    # --------------------------------------------------------------- host exec ---
    def _init_pid(self, name):
        h = self.host(name)
        ref = h.get("init_ref")
        if not procutil.ref_alive(ref):
            raise LabError(f"lab host {name} is not running (init process gone)")
        return ref["pid"]

    def host_command(self, name, argv):
        """argv prefixed by the nsenter that enters host ``name``."""
        return ["nsenter", "-t", str(self._init_pid(name)), "-m", "-u", "-n", "--"] + \
            [str(a) for a in argv]

    def host_exec(self, name, argv, check=True, capture=True, input=None, timeout=120,
                  env=None):
        """Run ``argv`` in host ``name``'s network, mount and UTS namespaces; returns a
        subprocess.CompletedProcess (text mode).  With ``check``, a non-zero exit raises
        LabError carrying stderr."""
        if isinstance(argv, str):
            argv = ["/bin/sh", "-c", argv]
        return _run(self.host_command(name, argv), check=check, capture=capture,
                    input=input, timeout=timeout, env=env, cwd="/")

    def host_popen(self, name, argv, **kwargs):
        """subprocess.Popen of ``argv`` inside host ``name`` (caller owns the process)."""
        kwargs.setdefault("cwd", "/")
        return subprocess.Popen(self.host_command(name, argv), **kwargs)

    # ----------------------------------------------------------------- libvirtd ---
    def libvirtd_pid(self, name):
        pid = procutil.read_pidfile(os.path.join(self.host_dir(name), "run/libvirt/libvirtd.pid"))
        return pid if pid and procutil.pid_alive(pid) else None

    def stop_libvirtd(self, name, sig=signal.SIGTERM, timeout=20.0):
        """Stop host ``name``'s libvirtd by PID (running QEMUs stay alive)."""
        pid = self.libvirtd_pid(name)
        if not pid:
            return False
        ref = procutil.proc_ref(pid)
        procutil.send_signal(ref, sig)
        left = procutil.wait_gone([ref], timeout)
        if left:
            procutil.terminate(left, timeout=5.0, sig=signal.SIGKILL)
        # libvirtd's parent is the host's subreaper, which reaps at once: wait for
        # that, so that its last threads (holding the TCP port) are gone too.
        procutil.wait_vanished([ref], 5.0)
        return True

    def start_libvirtd(self, name, timeout=60.0):
        """Start host ``name``'s libvirtd again below the host's init (its subreaper)
        and wait until it answers; it re-attaches to the running QEMUs."""
        with self._locked():
            h = self.host(name)
            init_ref = h.get("init_ref")
            if not procutil.ref_alive(init_ref):
                raise LabError(f"lab host {name} is not running (init process gone)")
            if not self.libvirtd_pid(name):
                procutil.send_signal(init_ref, signal.SIGUSR1)
            self._wait_hosts_ready([name], timeout, respawn=True)
            self._save()

    def restart_libvirtd(self, name, sig=signal.SIGTERM, timeout=60.0):
        """Kill host ``name``'s libvirtd by PID (with ``sig``), start a new one in the same
        namespaces and wait until it is ready.  Running QEMUs survive."""
        self.stop_libvirtd(name, sig=sig)
        self.start_libvirtd(name, timeout=timeout)

    # ------------------------------------------------------------------- broker ---
    def _broker_settings(self):
        self._refresh()
        b = self.state.get("broker")
        if not b:
            raise LabError("the lab has no broker (is it up?)")
        return b

    def broker_running(self):
        return _broker.is_running(self._broker_settings())

    def stop_broker(self):
        with self._locked():
            _broker.stop(self._broker_settings(), stop_epmd=False)
            self._save()

    def start_broker(self, timeout=60.0):
        with self._locked():
            b = self._broker_settings()
            if not _broker.is_running(b):
                _broker.start(b)
                self._keep(b.get("_proc"))
                self._save()
                _broker.wait_ready(b, timeout=timeout)
            self._save()

    def restart_broker(self, timeout=60.0):
        """Stop the lab's RabbitMQ node and start it again (same node, same data, same
        user); returns when clients can log in again.  Only this node is touched."""
        with self._locked():
            self.stop_broker()
            self.start_broker(timeout=timeout)

    def rabbitmqctl(self, *args, check=True, timeout=60):
        """Run ``rabbitmqctl <args>`` against the lab node (~1 s per call)."""
        return _broker.rabbitmqctl(self._broker_settings(), *args, check=check,
                                   timeout=timeout)

    # -------------------------------------------------------------------- agents ---
    def agent_command(self, name):
        h = self.host(name)
        return [self.state["agent_executable"], "--config-file", h["agent_config"]]

    def write_agent_config(self, name, extra_conf=None):
        """Write host ``name``'s agent config; ``extra_conf`` is {section: {opt: value}},
        merged over the lab defaults and the lab-wide ``extra_conf`` of ``up``.  It is
        remembered for the host and *replaces* the host's previous extra options
        (``{}`` clears them, None keeps them)."""
        h = self.host(name)
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str
        conf = {
            "DEFAULT": {
                "host": name,
                "instances_path": INSTANCES_PATH,
                "state_path": STATE_PATH,
                "transport_url": self.transport_url(from_root=False),
                "sync_power_state_interval": "2",
            },
            "libvirt": {
                "connection_uri": "qemu:///system",
                "virt_type": "qemu",
                "migration_uri_template": "qemu+tcp://%(host)s/system",
            },
            "image_cache": {
                "allowed_file_dirs": self.image_dir,
            },
        }
        if extra_conf is not None:
            h["extra_conf"] = extra_conf  # replaces the host's previous extra options
        for extra in (self.state.get("extra_conf"), h.get("extra_conf")):
            for section, opts in (extra or {}).items():
                conf.setdefault(section, {}).update({k: str(v) for k, v in opts.items()})
        for section, opts in conf.items():
            if section != "DEFAULT" and not cp.has_section(section):
                cp.add_section(section)
            for k, v in opts.items():
                cp.set(section, k, v)
        # the agent's RPC server consumes from "<topic>.<host>" (oslo.messaging)
        h["rpc_queue"] = "%s.%s" % (conf["DEFAULT"].get("rpc_topic", "computeagent"),
                                    conf["DEFAULT"]["host"])
        os.makedirs(os.path.dirname(h["agent_config"]), exist_ok=True)
        tmp = h["agent_config"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"# written by computeagent.lab for lab host {name}\n")
            cp.write(f)
        os.replace(tmp, h["agent_config"])
        return h["agent_config"]

    def agent_pid(self, name):
        """PID of host ``name``'s agent if it runs, else None."""
        self.load()
        ref = self.host(name).get("agent_ref")
        return ref["pid"] if procutil.ref_alive(ref) else None

    def agent_log(self, name):
        return self.host(name)["agent_log"]

    def _spawn_agent(self, name, extra_conf=None):
        h = self.host(name)
        if procutil.ref_alive(h.get("agent_ref")):
            if extra_conf is not None:
                raise LabError(f"agent of {name} already runs; stop it to change its config")
            return None
        self.write_agent_config(name, extra_conf)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONUNBUFFERED"] = "1"
        with open(h["agent_log"], "ab") as log:
            log.write(f"\n==== computeagent-lab: starting agent of {name} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
            log.flush()
            proc = self.host_popen(name, self.agent_command(name), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env)
        self._keep(proc)
        h["agent_ref"] = procutil.proc_ref(proc.pid)
        self._save()
        return proc

    def _check_agents_started(self, names, wait):
        deadline = time.monotonic() + wait
        while True:
            dead = [n for n in names if not procutil.ref_alive(self.host(n).get("agent_ref"))]
            if dead:
                n = dead[0]
                raise LabError(f"agent of {n} exited at start-up; {self.agent_log(n)}:\n"
                               + _tail(self.agent_log(n)))
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _wait_agents_serving(self, names, timeout):
        """Wait until each agent's RPC queue ("<rpc_topic>.<host>") has a consumer on
        the lab broker: before that, a cast to it is silently dropped."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        b = self._broker_settings()
        while pending:
            for n in list(pending):
                if not procutil.ref_alive(self.host(n).get("agent_ref")):
                    raise LabError(f"agent of {n} exited at start-up; {self.agent_log(n)}:\n"
                                   + _tail(self.agent_log(n)))
            queues = {self.host(n)["rpc_queue"]: n for n in pending}
            try:
                counts = _broker.queue_consumers(b, list(queues))
            except Exception as exc:  # noqa: broker restarting: keep polling
                LOG.debug("queue check failed: %s", exc)
                counts = {}
            for q, n in queues.items():
                if counts.get(q):
                    pending.remove(n)
            if not pending:
                return
            if time.monotonic() > deadline:
                n = pending[0]
                raise LabError(f"agent of {n} does not consume from "
                               f"{self.host(n)['rpc_queue']} after {timeout:.0f} s; "
                               f"{self.agent_log(n)}:\n" + _tail(self.agent_log(n)))
            time.sleep(0.1)

    def start_agent(self, name, extra_conf=None, wait=1.0, serving_timeout=60.0):
        """Start host ``name``'s agent (``computeagent --config-file <hostdir>/agent/
        computeagent.conf`` inside the host, output to ``<hostdir>/agent.log``) and
        return its PID once its RPC server consumes from its queue ("<rpc_topic>.
        <host>" on the lab broker; ``serving_timeout`` None skips that wait and only
        checks that it is still alive after ``wait`` seconds).  An agent that already
        runs is left alone."""
        with self._locked():
            self._spawn_agent(name, extra_conf)
        if serving_timeout is None:
            self._check_agents_started([name], wait)
        else:
            self._wait_agents_serving([name], serving_timeout)
        return self.agent_pid(name)

    def stop_agent(self, name, sig=signal.SIGTERM, timeout=15.0):
        """Send ``sig`` to host ``name``'s agent.  For SIGTERM/SIGINT/SIGQUIT/SIGKILL
        wait until it is gone (SIGKILL after ``timeout``); other signals (SIGHUP,
        SIGSTOP, ...) are only sent.  Returns True if a signal was sent."""
        with self._locked():
            h = self.host(name)
            ref = h.get("agent_ref")
            if not procutil.ref_alive(ref):
                h["agent_ref"] = None
                self._save()
                return False
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                if sig != signal.SIGKILL:
                    procutil.send_signal(ref, signal.SIGCONT)  # in case it was stopped
                procutil.terminate([ref], timeout=timeout, sig=sig)
                h["agent_ref"] = None
                self._save()
            else:
                procutil.send_signal(ref, sig)
            return True

    # ------------------------------------------------------------------------ up ---
    def _keep(self, proc):
        if proc is not None:
            self._procs[proc.pid] = proc

    def _reap(self):
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def up(self, hosts=2, agents=True, extra_conf=None, timeout=120.0,
           keep_on_failure=False):
        """Bring the lab up with ``hosts`` hypervisors (hosta, hostb, ...) and, when
        ``agents``, their agents.  Idempotent: a lab that is up and healthy with that
        many hosts is left alone (only missing agents are started); a stale or
        different one is torn down first.  Returns the state (lab.json)."""
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"hosts must be 1..{MAX_HOSTS}")
        with self._locked():
            st = self.state
            if (st.get("state") == "up" and len(st.get("hosts") or {}) == hosts
                    and (extra_conf is None or extra_conf == st.get("extra_conf"))
                    and self.status()["healthy"]):
                LOG.info("lab already up and healthy")
                if agents:
                    self._start_agents(self.host_names)
                return self.state
            if st:
                LOG.info("tearing down the previous lab (state %s)", st.get("state"))
            other = self._other_owner()
            if other:
                raise LabError(f"the lab of {other} is up on this machine (names, "
                               f"addresses and ports are machine-wide); bring it down "
                               f"first: computeagent-lab --lab-dir {other} down")
            self._down_locked(purge=False)
            try:
                self._up_locked(hosts, agents, extra_conf, timeout)
            except BaseException:
                self.state["state"] = "failed"
                self._save()
                if not keep_on_failure:
                    LOG.error("lab start failed; tearing it down (logs stay in %s)",
                              self.lab_dir)
                    with contextlib.suppress(Exception):
                        self._down_locked(purge=False, final_state="failed")
                raise
            return self.state

    def _check_prereqs(self):
        if os.geteuid() != 0:
            raise LabError("the lab needs root")
        missing = [b for b in REQUIRED_BINARIES if not shutil.which(b)]
        for path in (_broker.RABBITMQ_SERVER, _broker.EPMD):
            if not os.path.exists(path):
                missing.append(path)
        if not os.path.exists(self.state["agent_executable"]) and self.state.get("_agents"):
            missing.append(self.state["agent_executable"])
        if missing:
            raise LabError("missing for the lab: " + ", ".join(missing)
                           + " (run tools/bootstrap.sh)")

    def _build_subreaper(self):
        out = os.path.join(self.lab_dir, "bin", "subreaper")
        if (os.path.exists(out)
                and os.path.getmtime(out) >= os.path.getmtime(SUBREAPER_SRC)):
            return out
        if not shutil.which("gcc"):
            raise LabError("gcc is needed to build the lab's subreaper")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".tmp"
        _run(["gcc", "-O2", "-Wall", "-o", tmp, SUBREAPER_SRC])
        os.replace(tmp, out)
        return out

    def _new_state(self, hosts, extra_conf, prefix):
        labdir = self.lab_dir
        gateway = f"{prefix}.1"
        names = [host_name(i) for i in range(1, hosts + 1)]
        bdir = os.path.join(labdir, "broker")
        b = _broker.default_settings(bdir, ["127.0.0.1", gateway], port=BROKER_PORT,
                                     dist_port=BROKER_DIST_PORT,
                                     epmd_port=BROKER_EPMD_PORT, node=BROKER_NODE,
                                     user=BROKER_USER)
        b["transport_url"] = _broker.transport_url(b, "127.0.0.1")
        b["transport_url_hosts"] = _broker.transport_url(b, gateway)
        host_entries = {}
        for i, name in enumerate(names, start=1):
            hd = os.path.join(labdir, "hosts", name)
            agent_dir = os.path.join(hd, "agent")
            sock = os.path.join(hd, "run/libvirt/libvirt-sock")
            host_entries[name] = {
                "name": name,
                "index": i,
                "ip": host_ip(i, prefix),
                "netns": NS_PREFIX + name,
                "veth": (NS_PREFIX + name)[:15],
                "dir": hd,
                "host_uuid": str(uuid.uuid4()),
                "libvirt_socket": sock,
                "libvirt_uri": f"qemu+unix:///system?socket={sock}",
                "libvirt_uri_in_host": "qemu:///system",
                "migration_uri": f"qemu+tcp://{name}/system",
                "agent_dir": agent_dir,
                "agent_config": os.path.join(agent_dir, "computeagent.conf"),
                "agent_log": os.path.join(hd, "agent.log"),
                "instances_path": INSTANCES_PATH,
                "instances_dir": os.path.join(agent_dir, "instances"),
                "state_path": STATE_PATH,
                "state_dir": os.path.join(agent_dir, "state"),
                "init_log": os.path.join(hd, "init.log"),
                "libvirtd_log": os.path.join(hd, "var/log/libvirt/libvirtd.log"),
                "qemu_log_dir": os.path.join(hd, "var/log/libvirt/qemu"),
                "init_ref": None,
                "libvirtd_ref": None,
                "agent_ref": None,
                "mnt_ns": None,
                "net_ns": None,
            }
        return {
            "version": STATE_VERSION,
            "state": "starting",
            "lab_dir": labdir,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.executable,
            "agent_executable": os.path.join(sys.prefix, "bin", "computeagent"),
            "extra_conf": extra_conf or {},
            "network": {
                "bridge": BRIDGE,
                "prefix": prefix,
                "gateway": gateway,
                "prefixlen": PREFIXLEN,
                "cidr": f"{prefix}.0/{PREFIXLEN}",
                "host_bridge": HOST_BRIDGE,
            },
            "etc_hosts": dict([(n, h["ip"]) for n, h in host_entries.items()]
                              + [("calab-broker", gateway), ("calab-images", gateway)]),
            "broker": b,
            "images": {
                "dir": os.path.join(labdir, "images"),
                "bind": gateway,
                "port": IMAGE_PORT,
                "base_url": f"http://{gateway}:{IMAGE_PORT}/",
                "log": os.path.join(labdir, "imageserver.log"),
                "pid_file": os.path.join(labdir, "imageserver.pid"),
                "stats_file": os.path.join(labdir, "imageserver-stats.json"),
                "ref": None,
            },
            "subreaper": os.path.join(labdir, "bin", "subreaper"),
            "caps_cache": os.path.join(labdir, "cache", "qemu"),
            "host_names": names,
            "hosts": host_entries,
            "timings": {},
        }

    def _up_locked(self, nhosts, agents, extra_conf, timeout):
        t0 = time.monotonic()
        timings = {}

        def mark(what):
            timings[what] = round(time.monotonic() - t0, 3)
            LOG.info("%-16s %6.2f s", what, timings[what])

        previous = self.state or {}
        self.state = self._new_state(nhosts, extra_conf, choose_subnet())
        # Keep the broker password (clients holding the transport URL keep working
        # across a down/up) and the hosts' UUIDs.
        old_b = previous.get("broker") or {}
        if old_b.get("password") and old_b.get("user") == BROKER_USER:
            b = self.state["broker"]
            b["password"] = old_b["password"]
            gw = self.state["network"]["gateway"]
            b["transport_url"] = _broker.transport_url(b, "127.0.0.1")
            b["transport_url_hosts"] = _broker.transport_url(b, gw)
        for name, h in self.state["hosts"].items():
            old_h = (previous.get("hosts") or {}).get(name) or {}
            if old_h.get("host_uuid"):
                h["host_uuid"] = old_h["host_uuid"]
        self.state["_agents"] = agents
        self._check_prereqs()
        os.makedirs(self.lab_dir, exist_ok=True)
        shutil.rmtree(os.path.join(self.lab_dir, "hosts"), ignore_errors=True)
        shutil.rmtree(self.state["broker"]["dir"], ignore_errors=True)
        self._save()
        self._build_subreaper()
        mark("subreaper")

        _write(OWNER_FILE, self.lab_dir + "\n")
        self._setup_network()
        self._save()
        mark("network")

        b = self.state["broker"]
        _broker.start(b)
        self._keep(b.get("_proc"))
        self._save()
        self._start_image_server()
        self._save()
        mark("broker+images")

        for mp in MOUNT_POINTS:
            os.makedirs(mp, exist_ok=True)
        names = self.host_names
        cache = self.state["caps_cache"]
        have_cache = os.path.isdir(cache) and os.listdir(cache)
        for name in names:
            self._prepare_host(name, cache if have_cache else None)
        mark("host dirs")
        deadline = time.monotonic() + timeout
        if have_cache:
            for name in names:
                self._start_host(name)
            self._save()
            self._wait_hosts_ready(names, deadline - time.monotonic())
        else:
            first, rest = names[0], names[1:]
            self._start_host(first)
            self._save()
            self._wait_hosts_ready([first], deadline - time.monotonic())
            mark("first libvirtd")
            self._probe_capabilities(first)
            mark("caps probe")
            src = os.path.join(self.host_dir(first), "var/cache/libvirt/qemu")
            for name in rest:
                dst = os.path.join(self.host_dir(name), "var/cache/libvirt/qemu")
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, symlinks=True)
                self._start_host(name)
            self._save()
            self._wait_hosts_ready(rest, deadline - time.monotonic())
            self._save_caps_cache(first)
        self._save()
        mark("libvirtds")

        _broker.wait_ready(b, timeout=max(5.0, deadline - time.monotonic()))
        self._save()
        mark("broker ready")
        self._wait_image_server(deadline)
        mark("images ready")

        for name in names:
            self.write_agent_config(name)
        self.state["state"] = "up"
        self.state.pop("_agents", None)
        self.state["timings"] = timings
        self._save()
        if agents:
            self._start_agents(names)
            mark("agents")
        timings["total"] = round(time.monotonic() - t0, 3)
        self.state["up_seconds"] = timings["total"]
        self._save()
        LOG.info("lab up in %.2f s", timings["total"])

    def _start_agents(self, names, serving_timeout=60.0):
        started = [n for n in names if self._spawn_agent(n) is not None]
        if started:
            self._wait_agents_serving(started, serving_timeout)

    # -- network --
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
                    f"link set {net['host_bridge']} up"]
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

    # -- image server --
    def _start_image_server(self):
        im = self.state["images"]
        os.makedirs(im["dir"], exist_ok=True)
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(PKG_DIR))
        env["PYTHONPATH"] = pkg_parent + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(im["log"], "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "computeagent.lab.imageserver", "--dir", im["dir"],
                 "--bind", im["bind"], "--port", str(im["port"]),
                 "--stats-file", im["stats_file"]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=self.lab_dir, env=env)
        self._keep(proc)
        im["ref"] = procutil.proc_ref(proc.pid)
        procutil.write_pidfile(im["pid_file"], proc.pid)

    def _image_server_ok(self):
        try:
            self._images_request("GET", "_stats", timeout=2)
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _wait_image_server(self, deadline):
        im = self.state["images"]
        while not self._image_server_ok():
            if not procutil.ref_alive(im.get("ref")):
                raise LabError("image server exited; see " + im["log"] + ":\n"
                               + _tail(im["log"]))
            if time.monotonic() > deadline:
                raise LabError("image server not ready; see " + im["log"])
            time.sleep(0.02)

    # -- hosts --
    def _prepare_host(self, name, caps_cache=None):
        h = self.host(name)
        hd = h["dir"]
        shutil.rmtree(hd, ignore_errors=True)
        os.makedirs(os.path.join(hd, "etc"))
        shutil.copytree("/etc/libvirt", os.path.join(hd, "etc/libvirt"), symlinks=True)
        for sub in ("run/libvirt", "var/lib/libvirt", "var/log/libvirt", "var/cache/libvirt"):
            os.makedirs(os.path.join(hd, sub), exist_ok=True)
        os.makedirs(h["instances_dir"], exist_ok=True)
        os.makedirs(h["state_dir"], exist_ok=True)
        ip = h["ip"]
        _write(os.path.join(hd, "etc/libvirt/libvirtd.conf"), "\n".join([
            f"# computeagent lab: libvirtd of {name}",
            "listen_tls = 0",
            "listen_tcp = 1",
            f'listen_addr = "{ip}"',
            f'tcp_port = "{LIBVIRT_TCP_PORT}"',
            'auth_tcp = "none"',
            'auth_unix_rw = "none"',
            'auth_unix_ro = "none"',
            'unix_sock_group = "root"',
            f'host_uuid = "{h["host_uuid"]}"',
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "",
        ]))
        _write(os.path.join(hd, "etc/libvirt/qemu.conf"), "\n".join([
            f"# computeagent lab: QEMU driver of {name}",
            'user = "root"',
            'group = "root"',
            "dynamic_ownership = 0",
            "remember_owner = 0",
            'security_driver = "none"',
            'stdio_handler = "file"',
            "namespaces = [ ]",
            f'migration_host = "{ip}"',
            # No per-domain cgroups: the hosts share the machine's cgroup tree, and two
            # domains of one name and id (the usual case during a migration: each
            # libvirtd counts ids from 1) would share machine/qemu-<id>-<name>.
            "cgroup_controllers = [ ]",
            "",
        ]))
        hosts = ["127.0.0.1\tlocalhost",
                 "::1\tlocalhost ip6-localhost ip6-loopback"]
        by_ip = {}
        for hn, hip in self.state["etc_hosts"].items():
            by_ip.setdefault(hip, []).append(hn)
        hosts += [f"{hip}\t{' '.join(hns)}" for hip, hns in by_ip.items()]
        _write(os.path.join(hd, "etc/hosts"), "\n".join(hosts) + "\n")
        self._write_passwd_group(hd)
        if caps_cache:
            shutil.copytree(caps_cache, os.path.join(hd, "var/cache/libvirt/qemu"),
                            symlinks=True)

    @staticmethod
    def _write_passwd_group(hd):
        with open("/etc/passwd") as f:
            passwd = f.read()
        with open("/etc/group") as f:
            group = f.read()
        uids = {ln.split(":")[2] for ln in passwd.splitlines() if ln.count(":") >= 6}
        gids = {ln.split(":")[2] for ln in group.splitlines() if ln.count(":") >= 3}
        users = {ln.split(":")[0] for ln in passwd.splitlines()}
        groups = {ln.split(":")[0] for ln in group.splitlines()}
        uid = LIBVIRT_QEMU_UID
        while str(uid) in uids or str(uid) in gids:
            uid += 1
        if not passwd.endswith("\n"):
            passwd += "\n"
        if not group.endswith("\n"):
            group += "\n"
        if "libvirt-qemu" not in groups:
            group += f"libvirt-qemu:x:{uid}:\n"
        if "libvirt-qemu" not in users:
            passwd += (f"libvirt-qemu:x:{uid}:{uid}:Libvirt Qemu (lab):/var/lib/libvirt:"
                       "/usr/sbin/nologin\n")
        _write(os.path.join(hd, "etc/passwd"), passwd, mode=0o644)
        _write(os.path.join(hd, "etc/group"), group, mode=0o644)

    def _start_host(self, name):
        h = self.host(name)
        with open(h["init_log"], "ab") as log:
            # Pinned to one CPU (libvirt gives the QEMUs all CPUs back): libvirt
            # invalidates its QEMU capability cache when the "host CPUID" it reads
            # differs, and on the (nested) lab machines it differs from core to
            # core; unpinned, every libvirtd start re-probed QEMU about every other
            # time (+0.8 s per binary).
            cpu = min(os.sched_getaffinity(0))
            proc = subprocess.Popen(
                ["taskset", "-c", str(cpu),
                 "unshare", "--mount", "--uts", "--propagation", "private",
                 "nsenter", f"--net=/run/netns/{h['netns']}", "--",
                 "/bin/sh", HOST_INIT, name, h["dir"], self.state["subreaper"]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd="/")
        self._keep(proc)
        h["init_ref"] = procutil.proc_ref(proc.pid)

    def _libvirt_ok(self, name, timeout=None):
        h = self.host(name)
        if not os.path.exists(h["libvirt_socket"]):
            return False
        try:
            conn = _libvirt().open(h["libvirt_uri"])
        except Exception:  # noqa: libvirt.libvirtError, daemon starting
            return False
        try:
            conn.getVersion()
            return True
        except Exception:  # noqa
            return False
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _wait_hosts_ready(self, names, timeout, respawn=False):
        deadline = time.monotonic() + max(timeout, 1.0)
        pending = list(names)
        last_kick = time.monotonic()
        while pending:
            for name in list(pending):
                h = self.host(name)
                if not procutil.ref_alive(h["init_ref"]):
                    raise LabError(f"lab host {name}: init exited; {h['init_log']}:\n"
                                   + _tail(h["init_log"]))
                pid = self.libvirtd_pid(name)
                if pid and self._libvirt_ok(name):
                    h["libvirtd_ref"] = procutil.proc_ref(pid)
                    h["mnt_ns"] = procutil.ns_inode(f"/proc/{h['init_ref']['pid']}/ns/mnt")
                    h["net_ns"] = procutil.ns_inode(f"/proc/{h['init_ref']['pid']}/ns/net")
                    pending.remove(name)
                elif respawn and not pid and time.monotonic() - last_kick > 0.5:
                    procutil.send_signal(h["init_ref"], signal.SIGUSR1)
                    last_kick = time.monotonic()
            if not pending:
                break
            if time.monotonic() > deadline:
                name = pending[0]
                h = self.host(name)
                raise LabError(f"libvirtd of {name} not ready; {h['init_log']}:\n"
                               + _tail(h["init_log"]) + f"\n{h['libvirtd_log']}:\n"
                               + _tail(h["libvirtd_log"]))
            time.sleep(0.02)

    def _probe_capabilities(self, name):
        conn = self.libvirt_connect(name)
        try:
            conn.getCapabilities()
        finally:
            conn.close()

    def _save_caps_cache(self, name):
        src = os.path.join(self.host_dir(name), "var/cache/libvirt/qemu")
        dst = self.state["caps_cache"]
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            shutil.copytree(src, tmp, symlinks=True)
            shutil.rmtree(dst, ignore_errors=True)
            os.replace(tmp, dst)
        except OSError as exc:
            LOG.warning("could not save the QEMU capability cache: %s", exc)

    # ---------------------------------------------------------------------- down ---
    def down(self, purge=False):
        """Stop everything of the lab (by PID) and remove its network.  Works after a
        failed ``up`` and after a crash (missing processes are fine).  With ``purge``,
        also delete the lab dir (images included)."""
        with self._locked():
            self._down_locked(purge=purge)

    def _other_owner(self):
        """The lab dir of another lab that is up on this machine, or None."""
        try:
            with open(OWNER_FILE) as f:
                owner = f.read().strip()
        except OSError:
            return None
        if not owner or os.path.abspath(owner) == self.lab_dir:
            return None
        # stale if that lab's state says it is not up any more
        try:
            with open(os.path.join(owner, "lab.json")) as f:
                if json.load(f).get("state") not in ("up", "starting"):
                    return None
        except (OSError, ValueError):
            return None
        return owner

    def _down_locked(self, purge=False, final_state="down"):
        t0 = time.monotonic()
        st = self.state or {}
        hosts = st.get("hosts") or {}
        # 1. agents
        procutil.terminate([h.get("agent_ref") for h in hosts.values()], timeout=10.0)
        # 2. guests: destroy through libvirt, then kill leftover QEMUs by PID
        for name, h in hosts.items():
            if procutil.ref_alive(h.get("libvirtd_ref")) and os.path.exists(
                    h.get("libvirt_socket", "")):
                self._destroy_domains(name, h)
        for name, h in hosts.items():
            qdir = os.path.join(h.get("dir", "/nonexistent"), "run/libvirt/qemu")
            refs = []
            with contextlib.suppress(OSError):
                for fn in os.listdir(qdir):
                    if fn.endswith(".pid"):
                        pid = procutil.read_pidfile(os.path.join(qdir, fn))
                        if pid and self._in_host_ns(pid, h):
                            refs.append(procutil.proc_ref(pid))
            procutil.terminate(refs, timeout=3.0)
        # 3. libvirtd, the init, and whatever else still lives in the hosts' namespaces
        procutil.terminate([h.get("libvirtd_ref") for h in hosts.values()
                            if h.get("libvirtd_ref") and self._in_host_ns(
                                h["libvirtd_ref"]["pid"], h)], timeout=5.0)
        procutil.terminate([h.get("init_ref") for h in hosts.values()], timeout=3.0)
        for h in hosts.values():
            rest = procutil.pids_in_namespaces(mnt_ino=h.get("mnt_ns"), net_ino=h.get("net_ns"))
            procutil.terminate(rest, timeout=3.0, sig=signal.SIGKILL)
        # 4. broker (only our node and our epmd) and image server
        b = st.get("broker")
        if not b:
            b = _broker.default_settings(os.path.join(self.lab_dir, "broker"), [])
        _broker.stop(b)
        im = st.get("images") or {}
        images_ref = im.get("ref") or procutil.ref_from_pidfile(
            os.path.join(self.lab_dir, "imageserver.pid"),
            must_contain=("computeagent.lab.imageserver", self.lab_dir))
        procutil.terminate([images_ref], timeout=3.0)
        # 5. network
        if not self._other_owner():
            self._teardown_network(hosts)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(OWNER_FILE)
        else:
            LOG.warning("network left alone: it belongs to the lab of %s",
                        self._other_owner())
        self._reap()
        # 6. state
        for h in hosts.values():
            for k in ("init_ref", "libvirtd_ref", "agent_ref"):
                h[k] = None
        if im:
            im["ref"] = None
        if st:
            st["state"] = final_state
            st["down_seconds"] = round(time.monotonic() - t0, 3)
            self.state = st
            if os.path.isdir(self.lab_dir):
                self._save()
        if purge:
            shutil.rmtree(self.lab_dir, ignore_errors=True)
            self.state = {}
        LOG.info("lab down in %.2f s", time.monotonic() - t0)

    @staticmethod
    def _in_host_ns(pid, h):
        """True if ``pid`` lives in host ``h``'s mount or network namespace."""
        mnt = procutil.ns_inode(f"/proc/{pid}/ns/mnt")
        net = procutil.ns_inode(f"/proc/{pid}/ns/net")
        own_mnt = procutil.ns_inode("/proc/self/ns/mnt")
        own_net = procutil.ns_inode("/proc/self/ns/net")
        return ((mnt is not None and mnt == h.get("mnt_ns") and mnt != own_mnt)
                or (net is not None and net == h.get("net_ns") and net != own_net))

    def _destroy_domains(self, name, h):
        try:
            lv = _libvirt()
            conn = lv.open(h["libvirt_uri"])
        except Exception as exc:  # noqa
            LOG.warning("%s: cannot connect to libvirtd to destroy guests: %s", name, exc)
            return
        try:
            for dom in conn.listAllDomains(lv.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                with contextlib.suppress(Exception):
                    dom.destroy()
        except Exception as exc:  # noqa
            LOG.warning("%s: listing guests failed: %s", name, exc)
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    # -------------------------------------------------------------------- status ---
    def status(self):
        """Health of every component: {"state", "healthy", "broker", "images",
        "hosts": {name: {...}}}.  Cheap (no process is spawned)."""
        self.load()
        st = self.state
        if not st:
            return {"state": "absent", "healthy": False, "lab_dir": self.lab_dir}
        out = {"state": st.get("state"), "lab_dir": self.lab_dir, "hosts": {}}
        ok = st.get("state") == "up"
        b = st.get("broker")
        if b:
            alive = procutil.ref_alive(b.get("beam_ref"))
            ports = {ip: _broker.port_open(ip, b["port"]) for ip in b["listen"]} if alive else {}
            out["broker"] = {"alive": alive, "listening": ports,
                             "epmd_alive": procutil.ref_alive(b.get("epmd_ref")),
                             "pid": procutil.ref_pid(b.get("beam_ref")),
                             "transport_url": b.get("transport_url")}
            ok = ok and alive and all(ports.values()) and bool(ports)
        else:
            ok = False
        im = st.get("images")
        if im:
            alive = procutil.ref_alive(im.get("ref"))
            http = alive and self._image_server_ok()
            out["images"] = {"alive": alive, "http": http, "url": im["base_url"],
                             "pid": procutil.ref_pid(im.get("ref"))}
            ok = ok and http
        else:
            ok = False
        for name in self.host_names:
            h = st["hosts"][name]
            init = procutil.ref_alive(h.get("init_ref"))
            lvd = self.libvirtd_pid(name) if init else None
            lv_ok = bool(lvd) and self._libvirt_ok(name)
            agent = procutil.ref_alive(h.get("agent_ref"))
            out["hosts"][name] = {
                "ip": h["ip"], "init": init, "init_pid": procutil.ref_pid(h.get("init_ref")),
                "libvirtd_pid": lvd, "libvirt": lv_ok,
                "netns": os.path.exists(f"/run/netns/{h['netns']}"),
                "agent": agent,
                "agent_pid": procutil.ref_pid(h.get("agent_ref")) if agent else None,
            }
            ok = ok and init and lv_ok and out["hosts"][name]["netns"]
        out["healthy"] = bool(ok)
        return out
