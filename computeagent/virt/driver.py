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

LOG = logging.getLogger(__name__)


class LibvirtDriver:
    def __init__(self, conf, host):
        self.conf = conf
        self.host = host

    # -- paths -----------------------------------------------------------
    @property
    def instances_path(self):
        return self.conf.instances_path

    def instance_dir(self, uuid):
        return utils.safe_join(self.instances_path, utils.validate_uuid(uuid))

    def disk_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "disk")

    def console_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "console.log")

    def make_instance_dir(self, uuid):
        path = self.instance_dir(uuid)
        os.makedirs(path, mode=0o755, exist_ok=True)
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
        return vconfig.build_domain_xml(
            instance, disk_path or self.disk_path(instance["uuid"]),
            virt_type=lv.virt_type, console_log=self.console_path(instance["uuid"]),
            kernel=lv.kernel_path, initrd=lv.initrd_path,
            cmdline=lv.kernel_cmdline if lv.kernel_path else None,
            nwfilter=lv.nwfilter or None, host=self.conf.host)

    def define_and_start(self, instance, start=True):
        conn = self.host.get_connection()
        dom = vguest.define(conn, self.domain_xml(instance))
        if start:
            vguest.start(dom)
        return dom

    def lookup(self, uuid):
        return self.host.lookup(uuid)

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
                facts["power_state"] = vguest.power_state(dom)
                out[facts["uuid"]] = facts
        return out

    def free_disk_gb(self):
        os.makedirs(self.instances_path, exist_ok=True)
        st = os.statvfs(self.instances_path)
        return st.f_bavail * st.f_frsize // (1024 ** 3)
