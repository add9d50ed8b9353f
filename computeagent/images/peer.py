"""Fetch a base image from a peer hypervisor that has it, over the libvirt
connection (``virStorageVolDownload`` of the peer's ``_base/<name>``, see
virt/storage.py; no ssh trust between hosts), when the image source is slow or
gone. The bytes get the same checks as a download from the image server: the
image's declared size and hash while they stream, then the cache's inspection.
"""
import logging

import libvirt

from computeagent import exception
from computeagent.images import fetch
from computeagent.virt import storage

LOG = logging.getLogger(__name__)


def pull_base(cache, peer_uri, image, progress=None):
    """Cache ``image`` from the peer at libvirt URI ``peer_uri``; its base is at
    the same path there (the cache layout is the same on every host).

    Returns :class:`computeagent.images.cache.BaseInfo` (source ``import``).

    :raises ImageDownloadFailed: the peer has no such base, the stream failed, or
        the bytes do not match the declared size and hash.
    :raises ImageUnacceptable: the content failed the inspection.
    """
    name = cache.base_name(image["id"])

    def produce(f):
        writer = fetch.VerifyingWriter(
            f, image_id=image["id"], size=image["size"], hash_algo=image["hash_algo"],
            expected_hash=image["hash"], what="peer's base", progress=progress)
        try:
            storage.download(peer_uri, cache.base_dir, name, writer)
        except libvirt.libvirtError as e:
            raise exception.ImageDownloadFailed(
                image_id=image["id"],
                reason="peer %s: %s" % (peer_uri, e.get_error_message()))
        return writer.finish()

    LOG.info("Fetching image %s from peer %s", image["id"], peer_uri)
    return cache.ensure_from(image, produce, "import")
