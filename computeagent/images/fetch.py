"""Download an image into an already open file, verifying size and hash on the way.

Supported URLs: ``http://``, ``https://`` (redirects only to http/https) and
``file:///`` inside ``[image_cache] allowed_file_dirs`` (after resolving symlinks;
an empty list refuses every file URL, CVE-2025-44021). Anything else is refused.

The body streams through a pipeline: a reader thread receives into a ring of
large buffers while the caller's thread hashes and writes the previous ones
(hashlib and file writes release the GIL on large buffers, so the network, the
hash and the disk run at once); all-zero buffers become holes; one fsync at the
end. It is hashed while it streams, with the declared algorithm (sha256 or
sha512) and always also with sha256 (the cache's digest). Reading stops as soon
as the body is longer than the declared size; a shorter body, a hash mismatch, an
HTTP error or a timeout fail too. Every failure raises
:class:`computeagent.exception.ImageDownloadFailed` with a precise reason; the
caller owns (and removes) the destination file.
"""
import ctypes
import dataclasses
import hashlib
import hmac
import ipaddress
import http.client
import logging
import os
import queue
import re
import socket
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from oslo_utils import units

from computeagent import exception
from computeagent.conf import CONF

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 4 * units.Mi   # one pipeline buffer
PIPE_BUFFERS = 8            # buffers in flight: at most 32 MiB of memory
# The writer starts the write-back of every this many bytes at once (Linux
# sync_file_range(SYNC_FILE_RANGE_WRITE), which does not wait), so the disk works
# while the network still delivers and the one fsync at the end finds little left.
WRITEBACK_EVERY = 32 * units.Mi
_SYNC_FILE_RANGE_WRITE = 2
_ZEROS = bytes(CHUNK_SIZE)
_EOF = object()
HASH_ALGOS = {"sha256": 64, "sha512": 128}  # name -> hex digest length
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
USER_AGENT = "computeagent-image-fetch"


@dataclasses.dataclass(frozen=True)
class FetchResult:
    size: int        # bytes written
    sha256: str      # hex sha256 of the body (always computed)
    hash_algo: str   # the declared algorithm
    hash: str        # hex digest of the body with the declared algorithm


class _Refused(Exception):
    pass


def redact_url(url):
    """``url`` without user info, query or fragment, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = "%s:%d" % (host, parts.port)
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<unparsable URL>"


def _fail(image_id, reason):
    LOG.warning("Download of image %s failed: %s", image_id, reason)
    return exception.ImageDownloadFailed(image_id=image_id, reason=reason)


def max_image_size():
    return CONF.image_cache.max_image_size_gb * units.Gi


def _check_declared(image_id, size, hash_algo, expected_hash):
    if hash_algo not in HASH_ALGOS:
        raise _fail(image_id, "hash algorithm %r is not supported (sha256, sha512)"
                    % (hash_algo,))
    if (not isinstance(expected_hash, str) or len(expected_hash) != HASH_ALGOS[hash_algo]
            or not _HEX_RE.match(expected_hash)):
        raise _fail(image_id, "declared %s hash is malformed" % hash_algo)
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _fail(image_id, "declared size %r is not a byte count" % (size,))
        if size > max_image_size():
            raise _fail(image_id, "declared size %d bytes exceeds "
                                  "image_cache.max_image_size_gb (%d GiB)"
                        % (size, CONF.image_cache.max_image_size_gb))


def host_allowed(host, allowed=None):
    """Whether ``host`` (a URL's host name or IP literal) is in
    ``[image_cache] allowed_url_hosts`` (empty: every host)."""
    allowed = [a.strip() for a in (CONF.image_cache.allowed_url_hosts
                                   if allowed is None else allowed) if a.strip()]
    if not allowed:
        return True
    if not host:
        return False
    host = host.lower().rstrip(".")
    names = {a.lower().rstrip(".") for a in allowed if not _is_network(a)}
    if host in names:
        return True
    nets = [ipaddress.ip_network(a, strict=False) for a in allowed if _is_network(a)]
    if not nets:
        return False
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        addrs = [ipaddress.ip_address(i[4][0].split("%")[0]) for i in infos]
    return bool(addrs) and all(any(a in n for n in nets) for a in addrs)


def _is_network(entry):
    try:
        ipaddress.ip_network(entry.strip(), strict=False)
        return True
    except ValueError:
        return False


def _check_host(url):
    host = urllib.parse.urlsplit(url).hostname
    if not host_allowed(host):
        raise _Refused("host %r is not in image_cache.allowed_url_hosts"
                       % (host or "")[:64])


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http/https only (urllib would also follow ftp), and only
    to hosts in ``[image_cache] allowed_url_hosts``."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri") or ""
        full = urllib.parse.urljoin(req.full_url, target)
        scheme = urllib.parse.urlsplit(full).scheme.lower()
        if scheme not in ("http", "https"):
            fp.close()
            raise _Refused("redirect to a %r URL refused" % scheme[:16])
        try:
            _check_host(full)
        except _Refused as e:
            fp.close()
            raise _Refused("redirect refused: %s" % e)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _build_opener():
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(),
                    urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(),
                    _RedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def _open_http(image_id, url):
    """Return (readable, announced_length or None)."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT,
                                               "Accept-Encoding": "identity"})
    timeout = CONF.image_cache.download_timeout
    try:
        _check_host(url)
        resp = _build_opener().open(req, timeout=timeout)
    except _Refused as e:
        raise _fail(image_id, str(e))
    except urllib.error.HTTPError as e:
        e.close()
        # the status code only: the reason phrase is the foreign server's text
        raise _fail(image_id, "HTTP %d from %s" % (e.code, redact_url(url)))
    except urllib.error.URLError as e:
        raise _fail(image_id, "cannot connect to %s: %s" % (redact_url(url), e.reason))
    except TimeoutError:
        raise _fail(image_id, "timed out after %ss connecting to %s"
                    % (timeout, redact_url(url)))
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _fail(image_id, "request to %s failed: %s" % (redact_url(url), e))
    if resp.status != 200:
        resp.close()
        raise _fail(image_id, "HTTP %d from %s (expected 200)"
                    % (resp.status, redact_url(url)))
    announced = resp.headers.get("Content-Length")
    length = None
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            resp.close()
            raise _fail(image_id, "bad Content-Length %r" % announced[:32])
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        resp.close()
        raise _fail(image_id, "server sent Content-Encoding %r" % encoding[:32])
    return resp, length


def check_source(image_id, url):
    """Refuse, before anything else happens, an image URL this host would refuse to
    fetch (a ``file://`` path outside ``allowed_file_dirs``), even when a base of that
    image id is already cached: the request itself is wrong."""
    if url.startswith("file:"):
        _file_path(image_id, url)
    elif url.lower().startswith(("http:", "https:")):
        try:
            _check_host(url)
        except _Refused as e:
            raise _fail(image_id, str(e))


def _file_path(image_id, url):
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise _fail(image_id, "file URL with a host (%r) refused" % parts.netloc)
    allowed = [os.path.realpath(d) for d in CONF.image_cache.allowed_file_dirs if d]
    if not allowed:
        raise _fail(image_id, "file:// image URLs are refused "
                              "(image_cache.allowed_file_dirs is empty)")
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/") or "\x00" in path:
        raise _fail(image_id, "file URL path must be absolute")

    def inside(p):
        return any(p != d and os.path.commonpath([p, d]) == d for d in allowed)

    real = os.path.realpath(path)
    if not inside(real):
        raise _fail(image_id, "file %s is outside image_cache.allowed_file_dirs" % path)
    return path, real, inside


def _open_file(image_id, url):
    path, real, inside = _file_path(image_id, url)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise _fail(image_id, "cannot open %s: %s" % (path, e.strerror))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(image_id, "%s is not a regular file" % path)
        # A directory on the resolved path may have been swapped meanwhile.
        if not inside(os.path.realpath("/proc/self/fd/%d" % fd)):
            raise _fail(image_id, "file %s moved outside image_cache.allowed_file_dirs"
                        % path)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, st.st_size


def _reader(src, limit, free, full, stop):
    """Reader thread: fill free buffers from ``src`` and queue them, then
    ``_EOF``; an exception is queued instead of raised."""
    total = 0

    def put(item):
        while not stop.is_set():
            try:
                full.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            buf = free.get()
            want = min(CHUNK_SIZE, limit - total + 1)  # +1 to notice an overrun
            view = memoryview(buf)[:want]
            n = src.readinto(view) if hasattr(src, "readinto") else None
            if n is None:  # no readinto: plain read()
                chunk = src.read(want)
                n = len(chunk)
                view[:n] = chunk
            if not n:
                put(_EOF)
                return
            total += n
            if not put((buf, n)):
                return
            if total > limit:
                return
    except BaseException as e:  # reported by the consumer
        put(e)


def _load_sync_file_range():
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):      # not Linux/glibc: the fsync does it all
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd, offset, nbytes):
    """Ask the kernel to start writing ``[offset, offset + nbytes)`` of ``fd`` to
    disk without waiting for it. Advisory: a failure changes nothing (the final
    fsync still makes the file durable)."""
    if _sync_file_range is not None and nbytes > 0:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)


def _writer(dest, todo, free, errors):
    """Writer thread: write (or skip, for holes) each queued buffer, then hand
    it back; stops at ``None``. Starts the write-back of each ``WRITEBACK_EVERY``
    bytes as it goes. The first OSError is kept in ``errors``."""
    try:
        fd = dest.fileno()
        pos = kicked = dest.tell()
    except (OSError, ValueError):           # not a file: nothing to write back
        fd = pos = kicked = None
    while True:
        item = todo.get()
        if item is None:
            return
        buf, n, hole = item
        if not errors:
            try:
                if hole:
                    dest.seek(n, os.SEEK_CUR)
                else:
                    dest.write(memoryview(buf)[:n])
                if fd is not None:
                    pos += n
                    if pos - kicked >= WRITEBACK_EVERY:
                        dest.flush()
                        start_writeback(fd, kicked, pos - kicked)
                        kicked = pos
            except OSError as e:
                errors.append(e)
        free.put(buf)


def copy_stream(src, dest, *, image_id, size, hash_algo, expected_hash,
                what="image", progress=None):
    """Copy the readable ``src`` into the binary file ``dest``, verifying it.

    Three stages at once: a reader thread receives into a ring of
    ``PIPE_BUFFERS`` buffers of ``CHUNK_SIZE``, this thread hashes them, a
    writer thread writes them (or seeks over all-zero ones: holes).
    ``size`` None means unknown: only ``max_image_size_gb`` bounds the body.
    ``progress(bytes_done)`` is called after each buffer (keep it cheap).
    Flushes and fsyncs ``dest`` once at the end. Returns :class:`FetchResult`.
    """
    _check_declared(image_id, size, hash_algo, expected_hash)
    limit = size if size is not None else max_image_size()
    sha256 = hashlib.sha256()
    declared = sha256 if hash_algo == "sha256" else hashlib.new(hash_algo)
    free, full, stop = queue.Queue(), queue.Queue(PIPE_BUFFERS), threading.Event()
    todo, write_errors = queue.Queue(), []
    for _ in range(PIPE_BUFFERS):
        free.put(bytearray(CHUNK_SIZE))
    reader = threading.Thread(target=_reader, args=(src, limit, free, full, stop),
                              name="fetch-reader", daemon=True)
    writer = threading.Thread(target=_writer, args=(dest, todo, free, write_errors),
                              name="fetch-writer", daemon=True)
    reader.start()
    writer.start()
    total = 0
    started = time.monotonic()
    waited = 0.0      # time this thread waited for the network
    try:
        while True:
            t = time.monotonic()
            item = full.get()
            waited += time.monotonic() - t
            if item is _EOF:
                reader.join()
                break
            if isinstance(item, BaseException):
                if isinstance(item, TimeoutError):
                    raise _fail(image_id, "timed out reading the %s after %d bytes"
                                % (what, total))
                if isinstance(item, (OSError, http.client.HTTPException, ValueError)):
                    raise _fail(image_id, "reading the %s failed after %d bytes: %s"
                                % (what, total, item))
                raise item
            buf, n = item
            total += n
            if total > limit:
                if size is not None:
                    raise _fail(image_id, "body is longer than the declared size "
                                          "(%d bytes)" % size)
                raise _fail(image_id, "body exceeds image_cache.max_image_size_gb "
                                      "(%d GiB)" % CONF.image_cache.max_image_size_gb)
            view = memoryview(buf)[:n]
            sha256.update(view)
            if declared is not sha256:
                declared.update(view)
            # all zeroes: leave a hole (disk images are mostly empty)
            hole = (buf == _ZEROS) if n == CHUNK_SIZE else (view == _ZEROS[:n])
            todo.put((buf, n, hole))
            if write_errors:
                break
            if progress is not None:
                progress(total)
    finally:
        stop.set()
        todo.put(None)
        writer.join()
        free.put(bytearray(0))  # unblock a reader waiting for a buffer
    if write_errors:
        raise _fail(image_id, "writing the %s failed: %s" % (what, write_errors[0]))
    elapsed = time.monotonic() - started
    t = time.monotonic()
    result = _finish(dest, image_id, size, total, sha256, declared, hash_algo,
                     expected_hash, what)
    LOG.info("Received %d bytes of image %s in %.2f s (%.0f MiB/s; the hashing "
             "thread waited for the network %.2f s), fsync %.2f s", total,
             image_id, elapsed, total / units.Mi / max(elapsed, 1e-6), waited,
             time.monotonic() - t)
    return result


def _finish(dest, image_id, size, total, sha256, declared, hash_algo, expected_hash,
            what):
    """Size and hash checks once the body ended, then the one fsync."""
    if size is not None and total != size:
        raise _fail(image_id, "body is shorter than the declared size "
                              "(%d of %d bytes)" % (total, size))
    got = declared.hexdigest()
    if not hmac.compare_digest(got, expected_hash.lower()):
        raise _fail(image_id, "%s mismatch: got %s, expected %s"
                    % (hash_algo, got, expected_hash.lower()))
    try:
        dest.truncate(total)          # a trailing hole still counts in the size
        dest.flush()
        os.fsync(dest.fileno())
    except OSError as e:
        raise _fail(image_id, "writing the %s failed: %s" % (what, e))
    return FetchResult(size=total, sha256=sha256.hexdigest(), hash_algo=hash_algo,
                       hash=got)


class VerifyingWriter:
    """A write-only file object for push-style sources (a libvirt stream from a
    peer hypervisor): what is written into it goes into ``dest`` with the same
    checks as a download (size bound, hashes, holes); :meth:`finish` makes the
    final checks and returns :class:`FetchResult`."""

    def __init__(self, dest, *, image_id, size, hash_algo, expected_hash,
                 what="image", progress=None):
        _check_declared(image_id, size, hash_algo, expected_hash)
        self.dest, self.image_id, self.size, self.what = dest, image_id, size, what
        self.hash_algo, self.expected_hash = hash_algo, expected_hash
        self.limit = size if size is not None else max_image_size()
        self.sha256 = hashlib.sha256()
        self.declared = (self.sha256 if hash_algo == "sha256"
                         else hashlib.new(hash_algo))
        self.total = 0
        self.progress = progress

    def write(self, data):
        n = len(data)
        self.total += n
        if self.total > self.limit:
            raise _fail(self.image_id, "%s is longer than the declared size (%d bytes)"
                        % (self.what, self.limit))
        self.sha256.update(data)
        if self.declared is not self.sha256:
            self.declared.update(data)
        try:
            if n <= CHUNK_SIZE and data == _ZEROS[:n]:
                self.dest.seek(n, os.SEEK_CUR)
            else:
                self.dest.write(data)
        except OSError as e:
            raise _fail(self.image_id, "writing the %s failed: %s" % (self.what, e))
        if self.progress is not None:
            self.progress(self.total)
        return n

    def finish(self):
        return _finish(self.dest, self.image_id, self.size, self.total, self.sha256,
                       self.declared, self.hash_algo, self.expected_hash, self.what)


def fetch(url, dest, *, image_id, size, hash_algo, expected_hash, progress=None):
    """Download ``url`` into the open binary file ``dest``; return FetchResult.

    :param size: declared body size in bytes (required).
    :param hash_algo: ``"sha256"`` or ``"sha512"``.
    :param expected_hash: declared hex digest.
    :raises computeagent.exception.ImageDownloadFailed:
    """
    if not isinstance(url, str):
        raise _fail(image_id, "image URL must be a string")
    if size is None:
        raise _fail(image_id, "image size is not declared")
    _check_declared(image_id, size, hash_algo, expected_hash)
    try:
        scheme = urllib.parse.urlsplit(url).scheme.lower()
    except ValueError:
        raise _fail(image_id, "image URL cannot be parsed")
    if scheme in ("http", "https"):
        src, length = _open_http(image_id, url)
        what = "server announces"
    elif scheme == "file":
        src, length = _open_file(image_id, url)
        what = "file has"
    else:
        raise _fail(image_id, "URL scheme %r is not allowed (http, https, file)"
                    % scheme[:16])
    if length is not None and length != size:
        src.close()
        raise _fail(image_id, "body is %s than the declared size (%s %d bytes, "
                              "declared %d)" % ("longer" if length > size else "shorter",
                                                what, length, size))
    LOG.info("Downloading image %s from %s", image_id, redact_url(url))
    try:
        return copy_stream(src, dest, image_id=image_id, size=size,
                           hash_algo=hash_algo, expected_hash=expected_hash,
                           progress=progress)
    finally:
        src.close()
