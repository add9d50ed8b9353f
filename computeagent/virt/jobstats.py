"""Read-only job statistics of a domain's running job (for metrics): the memory
dirty rate libvirt reports during a migration."""
import libvirt


def dirty_rate_bytes(dom):
    """Bytes per second the guest dirties during its current job, or None."""
    try:
        stats = dom.jobStats()
    except libvirt.libvirtError:
        return None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    rate = stats.get("memory_dirty_rate")
    if rate is None:
        return None
    return rate * stats.get("memory_page_size", 4096)
