"""The base image a migration destination needs, written once for live migration
and resize: through the image cache, or -- when the image source no longer has it
-- pulled from the source host's libvirtd (a storage stream over the peer
connection, no ssh), and in every case checked against the source's digest."""
import logging
import os
import tempfile
import time

from computeagent import exception
from computeagent.images import fetch
from computeagent.virt import storage

LOG = logging.getLogger(__name__)


def pull_from_peer(driver, cache, source, image, disk_info):
    """Fetch the base ``disk_info["backing_file"]`` from ``source`` into the cache,
    accepted only with the digest the source reported."""
    base_dir = os.path.dirname(cache.base_path(image["id"]))
    name = os.path.basename(disk_info["backing_file"])
    os.makedirs(base_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".%s.part-peer-" % name, dir=base_dir)
    # an untrusted peer: at most the image's declared size (else the cache's cap),
    # within the preparation's own time budget
    size = image.get("size")
    limit = size if isinstance(size, int) and size > 0 else fetch.max_image_size()
    deadline = time.monotonic() + driver.conf.migration.pre_live_migration_timeout
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                storage.download(driver.peer_uri(source), base_dir, name, f,
                                 max_bytes=limit, deadline=deadline)
            except storage.TransferLimit as e:
                raise exception.ImageDownloadFailed(image_id=image["id"],
                                                    reason="peer %s: %s" % (source, e))
            f.flush()
            os.fsync(f.fileno())
        return cache.import_base(image["id"], tmp, disk_info["base_digest"],
                                 image["disk_format"])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure(driver, cache, image, source, disk_info):
    """Make sure the base of ``image`` is in this host's cache with the digest the
    source reported; returns where it came from (cache, image-source, source-host)."""
    had = os.path.exists(cache.base_path(image["id"]))
    try:
        cache.ensure(image)
        came_from = "cache" if had else "image-source"
    except (exception.ImageDownloadFailed, exception.ImageUnacceptable) as e:
        LOG.info("image source failed (%s); pulling the base from %s", e, source)
        pull_from_peer(driver, cache, source, image, disk_info)
        came_from = "source-host"
    digest = cache.digest(image["id"])
    if disk_info.get("base_digest") and digest != disk_info["base_digest"]:
        raise exception.MigrationError(reason="base digest %s here differs from the "
                                       "source's %s" % (digest, disk_info["base_digest"]))
    return came_from
