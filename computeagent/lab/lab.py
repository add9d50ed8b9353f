"""A lab of real hypervisors on one machine: N libvirt/QEMU hosts, a RabbitMQ node and an
image HTTP server, for the functional tests and the demo.

Layout (all as root, on one machine; P is the lab's /24, 192.0.2 unless the machine
itself uses it -- then 198.51.100 or 203.0.113; see choose_subnet)::

    root namespace                              host "hosta" (netns calab-hosta, own mount
    bridge calab0 P.1/24                          and UTS namespaces, hostname hosta)
      |- RabbitMQ node calab@localhost            eth0 P.11/24  (veth <-> calab0)
      |    127.0.0.1:5673 and P.1:5673            br-lab (guest NICs)
      |- image server P.1:8090                    libvirtd --listen (TLS 16514)
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
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import sys
import threading
import time
import uuid

from computeagent.lab import broker as _broker
from computeagent.lab import cluster as _cluster
from computeagent.lab import procutil
from computeagent.lab.agents import AgentsMixin
from computeagent.lab.errors import LabError
from computeagent.lab.hosts import HostsMixin
from computeagent.lab.layout import (  # the names of the lab, re-exported here too
    AGENT_ROOT, BRIDGE, BROKER_DIST_PORT, BROKER_EPMD_PORT, BROKER_NODE, BROKER_PORT,
    BROKER_USER, DEFAULT_LAB_DIR, HOST_BRIDGE, HOST_INIT, IMAGE_PORT, INSTANCES_PATH,
    LIBVIRT_QEMU_UID, LIBVIRT_TCP_PORT, MAX_HOSTS, MOUNT_POINTS, NS_PREFIX, OWNER_FILE,
    PKG_DIR, PREFIXLEN, REQUIRED_BINARIES, STATE_PATH, STATE_VERSION, SUBNET_CANDIDATES,
    QEMU_RAM_PAD_SRC, QEMU_REAL_MOUNT, SUBREAPER_SRC, default_lab_dir, host_ip, host_name)
from computeagent.lab.network import NetworkMixin, choose_subnet
from computeagent.lab.services import BrokerMixin, ImageServerMixin
from computeagent.lab.util import LOG, _libvirt, _run, _write

__all__ = [
    "AGENT_ROOT", "BRIDGE", "BROKER_DIST_PORT", "BROKER_EPMD_PORT", "BROKER_NODE",
    "BROKER_PORT", "BROKER_USER", "DEFAULT_LAB_DIR", "HOST_BRIDGE", "HOST_INIT",
    "IMAGE_PORT", "INSTANCES_PATH", "LIBVIRT_QEMU_UID", "LIBVIRT_TCP_PORT", "LOG",
    "MAX_HOSTS", "MOUNT_POINTS", "NS_PREFIX", "OWNER_FILE", "PKG_DIR", "PREFIXLEN",
    "REQUIRED_BINARIES", "STATE_PATH", "STATE_VERSION", "SUBNET_CANDIDATES",
    "SUBREAPER_SRC", "Lab", "LabError", "choose_subnet", "default_lab_dir", "host_ip",
    "host_name",
]


class Lab(HostsMixin, AgentsMixin, NetworkMixin, BrokerMixin, ImageServerMixin,
          _cluster.ClusterMixin):
    """The lab in ``lab_dir`` (default ``$COMPUTEAGENT_LAB_DIR`` or
    ``/var/lib/computeagent-lab``).  ``state`` is the content of ``lab.json``.

    Its parts live in mixins: hosts and libvirtds (computeagent.lab.hosts), agents
    (computeagent.lab.agents), network (computeagent.lab.network), broker and image
    server (computeagent.lab.services)."""

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

    def pki_ca_dir(self):
        """The lab CA (cacert.pem, cakey.pem), kept across down/up."""
        return os.path.join(self.lab_dir, "pki", "ca")

    def libvirt_connect(self, name):
        """A libvirt.virConnect to the host's libvirtd (from the root namespace)."""
        return _libvirt().open(self.libvirt_uri(name))

    def transport_url(self, from_root=True):
        """The lab user's URL (administrator: tests, tools).  Clients also need
        :meth:`rabbit_ssl_options` (the broker speaks amqps only)."""
        b = self._broker_settings()
        return b["transport_url"] if from_root else b["transport_url_hosts"]

    def agent_transport_url(self, name):
        """Host ``name``'s agent's own broker user (``computeagent-<name>``), as seen
        from the hosts."""
        nodes = self.broker_nodes()
        b = nodes[0]
        return _cluster.transport_url(nodes, self.state["network"]["gateway"],
                                      user=_broker.agent_user(name),
                                      password=b["agent_users"][name])

    def rabbit_ssl_options(self, from_root=True):
        """``[oslo_messaging_rabbit]`` options of a client of the lab broker: amqps,
        the broker certificate checked against the lab CA (inside a host: its
        /etc/pki/CA/cacert.pem, the same CA)."""
        b = self._broker_settings()
        if not b.get("tls"):
            return {}
        ca = _broker.ca_file(b) if from_root else "/etc/pki/CA/cacert.pem"
        return {"ssl": "true", "ssl_ca_file": ca}

    def configure_messaging(self, conf):
        """Set :meth:`rabbit_ssl_options` (root namespace) on ``conf`` (an oslo.config
        ConfigOpts where oslo.messaging's options are or will be registered)."""
        from oslo_messaging._drivers import impl_rabbit
        conf.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
        for k, v in self.rabbit_ssl_options(from_root=True).items():
            conf.set_override(k, v, group="oslo_messaging_rabbit")
    # ------------------------------------------------------------------------ up ---
    def _keep(self, proc):
        if proc is not None:
            self._procs[proc.pid] = proc

    def _reap(self):
        for pid, proc in list(self._procs.items()):
            if proc.poll() is not None:
                del self._procs[pid]

    def up(self, hosts=2, agents=True, extra_conf=None, timeout=120.0,
           keep_on_failure=False, broker_nodes=1):
        """Bring the lab up with ``hosts`` hypervisors (hosta, hostb, ...) and, when
        ``agents``, their agents.  Idempotent: a lab that is up and healthy with that
        many hosts is left alone (only missing agents are started); a stale or
        different one is torn down first.  ``broker_nodes`` > 1: a RabbitMQ cluster
        of that many nodes (computeagent.lab.cluster).  Returns the state (lab.json)."""
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"hosts must be 1..{MAX_HOSTS}")
        with self._locked():
            st = self.state
            if (st.get("state") == "up" and len(st.get("hosts") or {}) == hosts
                    and (extra_conf is None or extra_conf == st.get("extra_conf"))
                    and 1 + len(st.get("broker_nodes") or []) == broker_nodes
                    # a lab made before the broker's TLS and per-agent users: rebuild
                    and (st.get("broker") or {}).get("tls")
                    and "agent_users" in (st.get("broker") or {})
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
                self._up_locked(hosts, agents, extra_conf, timeout, broker_nodes)
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

    def _install_qemu_wrapper(self):
        """<lab>/bin/qemu-system-x86_64: the real QEMU with the guest RAM padded by 8 KiB
        (qemu-tcg-ram-pad.sh says why), bind-mounted over the real binary on each host.
        ``COMPUTEAGENT_LAB_RAM_PAD=0`` leaves QEMU as it is (to reproduce the loss)."""
        if os.environ.get("COMPUTEAGENT_LAB_RAM_PAD", "1") == "0":
            self.state["qemu_wrapper"] = None
            return None
        out = os.path.join(self.lab_dir, "bin", "qemu-system-x86_64")
        with open(QEMU_RAM_PAD_SRC) as f:
            text = f.read().replace("@REAL@", QEMU_REAL_MOUNT)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        if not os.path.exists(QEMU_REAL_MOUNT):   # an empty file, the mount point
            os.makedirs(os.path.dirname(QEMU_REAL_MOUNT), exist_ok=True)
            _write(QEMU_REAL_MOUNT, "")
        try:
            with open(out) as f:
                same = f.read() == text
        except OSError:
            same = False
        if not same:     # unchanged: same ctime, libvirt's capability cache holds
            _write(out, text, mode=0o755)
        self.state["qemu_wrapper"] = out
        return out

    def _new_state(self, hosts, extra_conf, prefix, broker_nodes=1):
        labdir = self.lab_dir
        gateway = f"{prefix}.1"
        names = [host_name(i) for i in range(1, hosts + 1)]
        bdir = os.path.join(labdir, "broker")
        b = _broker.default_settings(bdir, ["127.0.0.1", gateway], port=BROKER_PORT,
                                     dist_port=BROKER_DIST_PORT,
                                     epmd_port=BROKER_EPMD_PORT, node=BROKER_NODE,
                                     user=BROKER_USER, ca_dir=self.pki_ca_dir(),
                                     agent_users={n: secrets.token_hex(12) for n in names})
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
                "migration_uri": f"qemu+tls://{name}/system",
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
            "broker_nodes": [_cluster.node_settings(labdir, k, ["127.0.0.1", gateway],
                                                    password=b["password"],
                                                    ca_dir=b["ca_dir"],
                                                    agent_users=b["agent_users"])
                             for k in range(2, broker_nodes + 1)],
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

    def _up_locked(self, nhosts, agents, extra_conf, timeout, broker_nodes=1):
        t0 = time.monotonic()
        timings = {}

        def mark(what):
            timings[what] = round(time.monotonic() - t0, 3)
            LOG.info("%-16s %6.2f s", what, timings[what])

        previous = self.state or {}
        self.state = self._new_state(nhosts, extra_conf, choose_subnet(), broker_nodes)
        # Keep the broker password (clients holding the transport URL keep working
        # across a down/up) and the hosts' UUIDs.
        old_b = previous.get("broker") or {}
        if old_b.get("password") and old_b.get("user") == BROKER_USER:
            b = self.state["broker"]
            b["password"] = old_b["password"]
            gw = self.state["network"]["gateway"]
            b["transport_url"] = _broker.transport_url(b, "127.0.0.1")
            b["transport_url_hosts"] = _broker.transport_url(b, gw)
        self._set_broker_urls()
        for name, h in self.state["hosts"].items():
            old_h = (previous.get("hosts") or {}).get(name) or {}
            if old_h.get("host_uuid"):
                h["host_uuid"] = old_h["host_uuid"]
        self.state["_agents"] = agents
        self._check_prereqs()
        os.makedirs(self.lab_dir, exist_ok=True)
        shutil.rmtree(os.path.join(self.lab_dir, "hosts"), ignore_errors=True)
        shutil.rmtree(self.state["broker"]["dir"], ignore_errors=True)
        for n in self.state["broker_nodes"]:
            shutil.rmtree(n["dir"], ignore_errors=True)
        self._save()
        self._build_subreaper()
        self._install_qemu_wrapper()
        mark("subreaper")

        _write(OWNER_FILE, self.lab_dir + "\n")
        self._setup_network()
        self._save()
        mark("network")

        b = self.state["broker"]
        _broker.start(b)
        self._keep(b.get("_proc"))
        for proc in _cluster.start_nodes(b, self.state["broker_nodes"]):
            self._keep(proc)
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
        _cluster.join_nodes(b, self.state["broker_nodes"],
                            timeout=max(30.0, deadline - time.monotonic()))
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
        _cluster.stop_all(b, st.get("broker_nodes") or [])
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
            # the namespaces are gone: their inodes will be reused (by another
            # slot's hosts too), a later down must not kill by them
            for k in ("init_ref", "libvirtd_ref", "agent_ref", "mnt_ns", "net_ns"):
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
            extra = {n["node"]: _broker.is_running(n) for n in st.get("broker_nodes") or []}
            out["broker"]["nodes"] = extra
            ok = ok and all(extra.values())
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
