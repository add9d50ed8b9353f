"""Live-migration policy as pure functions (no libvirt calls): flags, parameters,
progress and the completion-timeout decision. Easy to unit-test, easy to read."""
import xml.etree.ElementTree as ET

import libvirt

from computeagent.virt import config as vconfig

GiB = 1024 ** 3
MIN_COMPLETION_TIMEOUT = 60


def migration_flags(block_migration=True, auto_converge=False, tls=False):
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
             libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if block_migration:
        # Copy only the overlay: the destination already has the base and an
        # overlay on it (pre_live_migration made them).
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if tls:
        # libvirt refuses the migration when TLS is not set up: fails closed.
        flags |= libvirt.VIR_MIGRATE_TLS
    return flags


def migration_params(dest_xml, disks=("vda",), bandwidth_mib=0):
    """The destination XML goes in as both the live and the persistent definition
    (CVE-2020-17376); ``migrate_disks`` names exactly the instance's own disk
    (LP#1719362: an empty list copies every attached volume)."""
    params = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: list(disks),
    }
    if bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
    return params


def retarget_xml(xml, dest_host):
    """The migratable XML with the agent metadata naming its new owner."""
    root = ET.fromstring(xml)
    owner = root.find("./metadata/{%s}instance/{%s}owner-host"
                      % (vconfig.META_NS, vconfig.META_NS))
    if owner is not None:
        owner.text = dest_host
    return ET.tostring(root, encoding="unicode")


def completion_timeout(data_total, per_gib):
    """Seconds a migration may run, scaled by the data to copy (0 = never)."""
    if not per_gib:
        return 0
    return max(MIN_COMPLETION_TIMEOUT, int(per_gib * data_total / GiB))


def should_abort(elapsed, data_total, per_gib):
    limit = completion_timeout(data_total, per_gib)
    return bool(limit) and elapsed > limit


def progress(stats):
    """(percent 0-100, total, processed, remaining) from ``virDomainGetJobStats``."""
    total = int(stats.get("data_total", 0) or 0)
    processed = int(stats.get("data_processed", 0) or 0)
    remaining = int(stats.get("data_remaining", 0) or 0)
    if total <= 0:
        return 0, total, processed, remaining
    pct = int(100 * (total - remaining) / total)
    return max(0, min(100, pct)), total, processed, remaining


def byte_counters(stats):
    """Disk and memory bytes moved so far (``disk_*`` counts only what the block
    job copied: with NON_SHARED_INC, the overlay)."""
    return {"disk_total": int(stats.get("disk_total", 0) or 0),
            "disk_processed": int(stats.get("disk_processed", 0) or 0),
            "memory_processed": int(stats.get("memory_processed", 0) or 0)}
