"""Moving files between hypervisors over libvirt's own connection (no ssh trust
between hosts): a directory storage pool on the peer's path, then
``virStorageVolDownload`` / ``virStorageVolUpload`` through a libvirt stream."""
import logging
import os
import time
import xml.etree.ElementTree as ET

import libvirt

LOG = logging.getLogger(__name__)


def _pool_name(path):
    import hashlib
    return "computeagent-" + hashlib.sha1(path.encode()).hexdigest()[:12]


def _ensure_pool(conn, path):
    """A (transient) dir pool on ``path`` on the peer, refreshed."""
    name = _pool_name(path)
    try:
        pool = conn.storagePoolLookupByName(name)
        if not pool.isActive():
            pool.create(0)
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        root = ET.Element("pool", {"type": "dir"})
        ET.SubElement(root, "name").text = name
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "path").text = path
        try:
            pool = conn.storagePoolCreateXML(ET.tostring(root, encoding="unicode"), 0)
        except libvirt.libvirtError:
            # another agent thread created it meanwhile
            pool = conn.storagePoolLookupByName(name)
    pool.refresh(0)
    return pool


def _run_stream(stream, transfer, handler):
    """Run a whole stream transfer; abort the stream on any failure."""
    try:
        transfer(handler, None)
        stream.finish()
    except Exception:
        try:
            stream.abort()
        except libvirt.libvirtError:
            pass
        raise


class TransferLimit(Exception):
    """A stream from a peer passed its byte cap or its deadline."""


def download(peer_uri, remote_dir, name, fileobj, chunk_cb=None, max_bytes=None,
             deadline=None):
    """Stream ``remote_dir/name`` from the peer's libvirtd into ``fileobj``: at most
    ``max_bytes`` and until ``deadline`` (time.monotonic()), else the stream is
    aborted and TransferLimit raised (a peer is untrusted: it may send forever).

    Returns the number of bytes received.
    """
    conn = libvirt.open(peer_uri)
    try:
        pool = _ensure_pool(conn, remote_dir)
        vol = pool.storageVolLookupByName(name)
        stream = conn.newStream(0)
        received = [0]

        def sink(_stream, data, _opaque):
            if max_bytes is not None and received[0] + len(data) > max_bytes:
                raise TransferLimit("%s/%s: the peer sent more than %d bytes"
                                    % (remote_dir, name, max_bytes))
            if deadline is not None and time.monotonic() > deadline:
                raise TransferLimit("%s/%s: not received before the deadline"
                                    % (remote_dir, name))
            fileobj.write(data)
            received[0] += len(data)
            if chunk_cb:
                chunk_cb(received[0])
            return len(data)

        vol.download(stream, 0, 0, 0)
        _run_stream(stream, stream.recvAll, sink)
        return received[0]
    finally:
        conn.close()


def upload(peer_uri, remote_dir, name, src_path, capacity=None, progress_cb=None):
    """Create ``remote_dir/name`` on the peer (a raw volume of the file's size)
    and stream ``src_path`` into it. Returns the bytes sent."""
    size = os.path.getsize(src_path)
    conn = libvirt.open(peer_uri)
    try:
        pool = _ensure_pool(conn, remote_dir)
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = name
        ET.SubElement(root, "capacity").text = str(capacity or size)
        ET.SubElement(root, "allocation").text = "0"
        tgt = ET.SubElement(root, "target")
        ET.SubElement(tgt, "format", {"type": "raw"})
        vol = pool.createXML(ET.tostring(root, encoding="unicode"), 0)
        stream = conn.newStream(0)
        vol.upload(stream, 0, size, 0)
        with open(src_path, "rb") as f:
            sent = [0]

            def source(_stream, nbytes, _opaque):
                data = f.read(nbytes)
                sent[0] += len(data)
                if progress_cb is not None:
                    progress_cb(sent[0])
                return data
            _run_stream(stream, stream.sendAll, source)
        return size
    finally:
        try:
            pool.destroy()      # transient pool: gone once the copy is done
        except (libvirt.libvirtError, UnboundLocalError):
            pass
        conn.close()


def fetch_small_file(peer_uri, remote_dir, name, fileobj, max_bytes):
    """Like :func:`download` for one small file (a config drive): refuses a volume
    larger than ``max_bytes`` before reading it, and removes the transient pool."""
    conn = libvirt.open(peer_uri)
    pool = None
    try:
        pool = _ensure_pool(conn, remote_dir)
        try:
            vol = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise FileNotFoundError("%s/%s not on the peer" % (remote_dir, name))
            raise
        size = vol.info()[1]
        if size > max_bytes:
            raise ValueError("%s/%s on the peer is %d bytes (at most %d)"
                             % (remote_dir, name, size, max_bytes))
        stream = conn.newStream(0)
        got = [0]

        def sink(_stream, data, _opaque):
            got[0] += len(data)
            if got[0] > max_bytes:
                raise ValueError("%s/%s grew past %d bytes" % (remote_dir, name, max_bytes))
            fileobj.write(data)
            return len(data)

        vol.download(stream, 0, 0, 0)
        _run_stream(stream, stream.recvAll, sink)
        return got[0]
    finally:
        if pool is not None:
            try:
                pool.destroy()
            except libvirt.libvirtError:
                pass
        conn.close()
