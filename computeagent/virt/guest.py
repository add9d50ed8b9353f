"""Thin operations on one libvirt domain."""
import logging
import time

import libvirt

from computeagent.virt import power_state as ps

LOG = logging.getLogger(__name__)

_POWER = {
    libvirt.VIR_DOMAIN_NOSTATE: ps.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: ps.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: ps.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: ps.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: ps.RUNNING,   # still shutting down
    libvirt.VIR_DOMAIN_SHUTOFF: ps.SHUTDOWN,
    libvirt.VIR_DOMAIN_CRASHED: ps.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: ps.SUSPENDED,
}


def power_state(dom):
    if dom is None:
        return ps.SHUTDOWN
    state, _reason = dom.state()
    return _POWER.get(state, ps.NOSTATE)


def power_state_if_exists(dom):
    """:func:`power_state`, or None when the domain is gone since it was looked up."""
    try:
        return power_state(dom)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


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


def change_media(dom, eject_xml, insert_xml):
    """Swap a cdrom's medium on a running guest: eject (the guest sees the tray open
    and the medium go), then insert the new one, live and in the persistent
    definition. Two updates because libvirt ignores an update whose source path is
    unchanged, and the config drive keeps its path."""
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
    if dom.isActive():
        flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        dom.updateDeviceFlags(eject_xml, flags | libvirt.VIR_DOMAIN_DEVICE_MODIFY_FORCE)
    dom.updateDeviceFlags(insert_xml, flags)


def xml(dom, inactive=False):
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)


def remote_power_state(uri, uuid):
    """Power state of ``uuid`` on the libvirtd at ``uri`` (None: no such domain)."""
    from computeagent import exception
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise exception.HypervisorUnavailable(reason="%s: %s" % (uri, e))
    try:
        try:
            dom = conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise exception.HypervisorUnavailable(reason="%s: %s" % (uri, e))
        return power_state(dom)
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass
