"""Thin operations on one libvirt domain."""
import logging
import time

import libvirt

from computeagent import states

LOG = logging.getLogger(__name__)

_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: states.POWER_NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: states.POWER_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: states.POWER_RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: states.POWER_PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: states.POWER_RUNNING,   # still shutting down
    libvirt.VIR_DOMAIN_SHUTOFF: states.POWER_SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: states.POWER_CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: states.POWER_SUSPENDED,
}


def power_state(dom):
    if dom is None:
        return states.POWER_SHUTDOWN
    state, _reason = dom.state()
    return _POWER.get(state, states.POWER_NOSTATE)


def is_running(dom):
    return dom is not None and dom.isActive() == 1


def define(conn, xml):
    return conn.defineXML(xml)


def start(dom):
    if not dom.isActive():
        dom.create()


def destroy(dom):
    """Hard power-off; no error if already off."""
    try:
        if dom.isActive():
            dom.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
            raise


def shutdown(dom, timeout):
    """ACPI shutdown, then destroy after ``timeout`` seconds."""
    if not dom.isActive():
        return "already-off"
    if timeout > 0:
        try:
            dom.shutdown()
        except libvirt.libvirtError as e:
            LOG.info("ACPI shutdown of %s refused: %s", dom.name(), e)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not dom.isActive():
                return "clean"
            time.sleep(0.25)
    destroy(dom)
    return "destroyed"


def reboot(dom, timeout):
    """Reboot that works for guests without ACPI support: shut down (ACPI with a
    timeout, then destroy) and start again."""
    shutdown(dom, timeout)
    dom.create()


def undefine(dom):
    destroy(dom)
    flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
             libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
             libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    try:
        dom.undefineFlags(flags)
    except libvirt.libvirtError as e:
        code = e.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            return
        if code not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        dom.undefine()      # a driver without NVRAM/snapshot support


def update_interface(dom, iface_xml):
    """Change a running guest's interface (e.g. its nwfilter IP list) live and in
    the persistent definition, without a reboot."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.updateDeviceFlags(iface_xml, flags)


def xml(dom, inactive=False):
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
