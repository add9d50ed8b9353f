"""What the manager asks of the hypervisor, in terms of instances.

Paths: every instance lives in ``<instances_path>/<uuid>/`` (uuid checked by
``utils.validate_uuid`` before it gets here): ``disk`` (qcow2 overlay on a base in
``_base``) and ``console.log``.
"""
import logging
import os
import shutil

from computeagent import exception
from computeagent import utils
from computeagent.virt import config as vconfig
from computeagent.virt import guest as vguest
from computeagent.virt import migrate as vmigrate
from computeagent.virt import migration as policy
from computeagent.virt import transport as vtransport

LOG = logging.getLogger(__name__)


class LibvirtDriver:
    def __init__(self, conf, host):
        self.conf = conf
        self.host = host
        self.check_migration_options()

    # -- paths -----------------------------------------------------------
    @property
    def instances_path(self):
        return self.conf.instances_path

    def instance_dir(self, uuid):
        return utils.safe_join(self.instances_path, utils.validate_uuid(uuid))

    def disk_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "disk")

    def config_drive_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "disk.config")

    def console_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "console.log")

    def bound_console_log(self, uuid, max_bytes):
        """Cut the instance's console.log to its newest part if it is larger than
        ``max_bytes``; returns the number of bytes dropped (0: nothing done)."""
        return bound_file(self.console_path(uuid), max_bytes)

    def make_instance_dir(self, uuid):
        path = self.instance_dir(uuid)
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)  # disks, console log, config drive: root/QEMU only
        return path

    def remove_instance_dir(self, uuid, suffix=""):
        path = self.instance_dir(uuid) + suffix
        if os.path.isdir(path):
            shutil.rmtree(path)
            return True
        return False

    # -- domains ---------------------------------------------------------
    def domain_xml(self, instance, disk_path=None):
        lv = self.conf.libvirt
        drive = self.config_drive_path(instance["uuid"])
        return vconfig.build_domain_xml(
            instance, disk_path or self.disk_path(instance["uuid"]),
            virt_type=lv.virt_type, console_log=self.console_path(instance["uuid"]),
            kernel=lv.kernel_path, initrd=lv.initrd_path,
            cmdline=lv.kernel_cmdline if lv.kernel_path else None,
            nwfilter=lv.nwfilter or None, host=self.conf.host,
            config_drive=drive if os.path.exists(drive) else None)

    def define_and_start(self, instance, start=True):
        conn = self.host.get_connection()
        dom = vguest.define(conn, self.domain_xml(instance))
        if start:
            vguest.start(dom)
        return dom

    def lookup(self, uuid):
        return self.host.lookup(uuid)

    def inactive_xml(self, uuid):
        """The persistent definition of ``uuid`` (None when it has no domain)."""
        dom = self.host.lookup(uuid)
        return None if dom is None else vguest.xml(dom, inactive=True)

    def define_xml(self, xml):
        return vguest.define(self.host.get_connection(), xml)

    def peer_uri(self, host):
        """libvirt URI of peer ``host`` (TLS with this host's client certificate
        by default; virt/transport.py)."""
        lv = self.conf.libvirt
        return vtransport.peer_uri(lv.migration_uri_template, host, lv.pkipath)

    def peer_domain_state(self, host, uuid):
        """What the libvirtd of ``host`` has for ``uuid``, asked over the peer URI
        (the same authenticated connection storage transfers use): None when it has
        no such domain, else its power state.  Raises HypervisorUnavailable when that
        libvirtd cannot be asked (the caller must then assume the worst)."""
        return vguest.remote_power_state(self.peer_uri(host), uuid)

    # -- live migration (the libvirt calls are in virt/migrate.py) ----------
    def live_migrate(self, uuid, dest, on_progress, interval=0.5, inbound_addr=None):
        """Block-migrate ``uuid`` (NON_SHARED_INC) to ``dest``; ``on_progress(stats)``
        is called with the job statistics (``stats["convergence"]``: what the
        convergence policy did) and aborts the job by returning a reason.
        ``inbound_addr``: the address the destination takes QEMU streams on.
        Returns (last polled stats, completed stats); raises MigrationJobFailed."""
        mc = self.conf.migration
        opts = policy.ConvergenceOptions.from_conf(mc)
        dom = self.require(uuid)
        xml = policy.retarget_xml(vmigrate.migratable_xml(dom), dest)
        params = policy.migration_params(xml, bandwidth_mib=mc.bandwidth_mib)
        params.update(policy.convergence_params(opts))
        params.update(policy.inbound_params(inbound_addr))
        flags = policy.migration_flags(True, False, mc.tls) | policy.convergence_flags(opts)
        try:
            disk_bytes = os.stat(self.disk_path(uuid)).st_blocks * 512
        except OSError:
            disk_bytes = 0
        ram_bytes = int(dom.info()[1]) * 1024
        converge = vmigrate.Convergence(opts, ram_bytes, disk_bytes, name=uuid)
        LOG.info("live migration of %s to %s: flags %#x, params %s", uuid, dest, flags,
                 sorted(k for k in params if k not in ("destination_xml",
                                                      "persistent_xml")))
        return vmigrate.run_migration(self.host.get_connection(), dom,
                                      self.peer_uri(dest), params, flags, on_progress,
                                      interval, converge=converge)

    def check_migration_options(self):
        """Refuse (at start-up) option combinations QEMU 7.2 cannot run."""
        problems = policy.check_options(
            policy.ConvergenceOptions.from_conf(self.conf.migration))
        if problems:
            raise exception.InvalidInput(reason="[migration] " + "; ".join(problems))

    def hypervisor_warnings(self):
        """What an operator must know about this host's hypervisor (logged at
        start-up); empty when libvirt cannot be asked now."""
        try:
            version = self.host.get_connection().getVersion()
        except Exception:                  # libvirt down: init_host says so itself
            return []
        warnings = [policy.tcg_migration_warning(self.conf.libvirt.virt_type, version),
                    policy.qemu_tls_warning(self.conf.migration.tls,
                                            self.conf.migration.qemu_tls_dir,
                                            os.path.exists)]
        return [w for w in warnings if w]

    def abort_migration(self, uuid):
        dom = self.host.lookup(uuid)
        return dom is not None and vmigrate.abort_job(dom)

    def completed_job_stats(self, uuid):
        return vmigrate.job_info(self.host.lookup(uuid), completed=True)

    def domain_facts(self, uuid):
        """None (no domain here) or {power_state, active, job_active}; raises
        HypervisorUnavailable when libvirtd cannot be asked."""
        return vmigrate.domain_facts(self.host.get_connection(), uuid)

    def peer_domain_facts(self, host, uuid):
        """:meth:`domain_facts` asked of the libvirtd of ``host``."""
        return vmigrate.remote_domain_facts(self.peer_uri(host), uuid)

    def require(self, uuid):
        dom = self.host.lookup(uuid)
        if dom is None:
            raise exception.InstanceInvalidState(
                uuid=uuid, state="no domain", action="this operation",
                needed="a libvirt domain")
        return dom

    def power_state(self, uuid):
        return vguest.power_state(self.host.lookup(uuid))

    def power_off(self, uuid, timeout=None):
        dom = self.require(uuid)
        if timeout is None:
            timeout = self.conf.libvirt.shutdown_timeout
        return vguest.shutdown(dom, timeout)

    def power_on(self, uuid):
        vguest.start(self.require(uuid))

    def reboot(self, uuid):
        vguest.reboot(self.require(uuid), self.conf.libvirt.shutdown_timeout)

    def destroy(self, uuid, undefine=True):
        dom = self.host.lookup(uuid)
        if dom is None:
            return False
        if undefine:
            vguest.undefine(dom)
        else:
            vguest.destroy(dom)
        return True

    def update_interface(self, uuid, vif):
        dom = self.require(uuid)
        vguest.update_interface(dom, vconfig.interface_xml(
            vif, self.conf.libvirt.nwfilter or None))

    def swap_config_drive(self, uuid):
        """Show the guest the current ``disk.config`` (a new medium in its cdrom)."""
        path = self.config_drive_path(uuid)
        vguest.change_media(self.require(uuid), vconfig.config_drive_xml(None),
                            vconfig.config_drive_xml(path))

    def fetch_peer_file(self, peer_host, remote_dir, name, fileobj, max_bytes):
        """Copy ``remote_dir/name`` from ``peer_host``'s libvirtd into ``fileobj``
        (at most ``max_bytes``)."""
        from computeagent.virt import storage
        return storage.fetch_small_file(self.peer_uri(peer_host), remote_dir, name, fileobj, max_bytes)

    def live_interfaces(self, uuid):
        dom = self.host.lookup(uuid)
        if dom is None:
            return []
        return vconfig.parse_domain(vguest.xml(dom))["interfaces"]

    def list_managed_domains(self):
        """Domains carrying this agent's metadata: {uuid: parsed facts}."""
        out = {}
        for dom in self.host.list_domains():
            try:
                facts = vconfig.parse_domain(vguest.xml(dom, inactive=True))
            except Exception:
                continue
            if facts["instance"] is not None:
                state = vguest.power_state_if_exists(dom)
                if state is None:
                    # gone since it was listed (a live migration's end undefines
                    # the source domain): not here any more
                    continue
                facts["power_state"] = state
                out[facts["uuid"]] = facts
        return out

    def free_disk_gb(self):
        os.makedirs(self.instances_path, exist_ok=True)
        st = os.statvfs(self.instances_path)
        return st.f_bavail * st.f_frsize // (1024 ** 3)


TRUNCATED_MARK = b"[computeagent: console log truncated, %d bytes dropped]\n"


def bound_file(path, max_bytes):
    """Keep ``path`` (a file QEMU appends to, ``append='on'``: O_APPEND) at most
    ``max_bytes``: above it, keep the newest ``max_bytes // 2`` bytes from their first
    line start, behind one marker line.  Returns the bytes dropped.

    QEMU's writes always go to the end of the file, so after the truncate they follow
    the kept tail; a write that lands between the read and the truncate (microseconds)
    is lost, one between the truncate and our own append lands just before the tail."""
    if max_bytes <= 0:
        return 0
    try:
        if os.stat(path).st_size <= max_bytes:
            return 0
    except FileNotFoundError:
        return 0
    keep = max(1, max_bytes // 2)
    with open(path, "a+b") as f:   # O_APPEND like QEMU: our write goes to the end too
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - keep))
        tail = f.read()
        nl = tail.find(b"\n")
        if 0 <= nl < len(tail) - 1:
            tail = tail[nl + 1:]
        dropped = size - len(tail)
        f.truncate(0)
        f.write(TRUNCATED_MARK % dropped + tail)
        f.flush()
    return dropped
