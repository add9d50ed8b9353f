"""The lab's hosts: one mount/UTS/network namespace each, with its own libvirtd
(configuration, start, readiness, restart), commands run inside it, and the clean-up of
its guests."""
import contextlib
import os
import shutil
import signal
import subprocess
import time

from computeagent.lab import pki
from computeagent.lab import procutil
from computeagent.lab.errors import LabError
from computeagent.lab.layout import HOST_INIT, LIBVIRT_QEMU_UID, LIBVIRT_TLS_PORT
from computeagent.lab.util import LOG, _libvirt, _run, _tail, _write


class HostsMixin:
    """Hosts and their libvirtds (part of :class:`Lab`)."""

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
    def set_qemu_conf(self, name, key, value, restart=True):
        """Set ``key = value`` (a literal, e.g. ``1`` or ``"/etc/pki/qemu"``) in host
        ``name``'s qemu.conf and restart its libvirtd (running QEMUs survive).
        Tests use it to turn migrate_tls_force off for a TLS-off comparison."""
        path = os.path.join(self.host_dir(name), "etc/libvirt/qemu.conf")
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines()
                     if not ln.replace(" ", "").startswith(key + "=")]
        lines.append(f"{key} = {value}")
        _write(path, "\n".join(lines) + "\n")
        if restart:
            self.restart_libvirtd(name)

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
        # Certificates (computeagent/lab/pki.py): the lab CA's server + client
        # certificates of this host, in <host dir>/etc/pki (its /etc/pki).
        ca = pki.make_ca(self.pki_ca_dir())
        pki.make_host(ca, os.path.join(hd, "etc/pki"), name, ip)
        allowed = ", ".join('"%s"' % pki.allowed_dn(hn) for hn in self.host_names)
        _write(os.path.join(hd, "etc/libvirt/libvirtd.conf"), "\n".join([
            f"# computeagent lab: libvirtd of {name}",
            # Between hosts only TLS with a client certificate of the lab CA whose DN
            # names a lab hypervisor (no plain TCP, no anonymous access).
            "listen_tls = 1",
            "listen_tcp = 0",
            f'listen_addr = "{ip}"',
            f'tls_port = "{LIBVIRT_TLS_PORT}"',
            'auth_tls = "none"',
            "tls_no_verify_certificate = 0",
            "tls_no_sanity_certificate = 0",
            f"tls_allowed_dn_list = [ {allowed} ]",
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
            # QEMU-native TLS (migration memory stream and NBD disk copy): the host's
            # certificates in /etc/pki/qemu, peers verified against the lab CA, and
            # libvirt refuses any migration without VIR_MIGRATE_TLS.
            'default_tls_x509_cert_dir = "/etc/pki/qemu"',
            "default_tls_x509_verify = 1",
            'migrate_tls_x509_cert_dir = "/etc/pki/qemu"',
            "migrate_tls_x509_verify = 1",
            "migrate_tls_force = 1",
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
                 "/bin/sh", HOST_INIT, name, h["dir"], self.state["subreaper"],
                 self.state.get("qemu_wrapper") or ""],
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
        except Exception:  # libvirt.libvirtError, daemon starting
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
