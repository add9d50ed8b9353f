"""Download an image into an already open file, verifying size and hash on the way.

Supported URLs: ``http://``, ``https://`` (redirects only to http/https) and
``file:///`` inside ``[image_cache] allowed_file_dirs`` (after resolving symlinks;
an empty list refuses every file URL, CVE-2025-44021). Anything else is refused.

The body is hashed while it streams, with the declared algorithm (sha256 or
sha512) and always also with sha256 (the cache's digest). Reading stops as soon
as the body is longer than the declared size; a shorter body, a hash mismatch, an
HTTP error or a timeout fail too. Every failure raises
:class:`computeagent.exception.ImageDownloadFailed` with a precise reason; the
caller owns (and removes) the destination file.
"""
import dataclasses
import hashlib
import hmac
import http.client
import logging
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request

from oslo_utils import units

from computeagent import exception
from computeagent.conf import CONF

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 1 * units.Mi
_ZEROS = bytes(CHUNK_SIZE)
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


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http/https only (urllib would also follow ftp)."""

    def http_error_302(self, req, fp, code, msg, headers):
        target = headers.get("location") or headers.get("uri") or ""
        scheme = urllib.parse.urlsplit(
            urllib.parse.urljoin(req.full_url, target)).scheme.lower()
        if scheme not in ("http", "https"):
            fp.close()
            raise _Refused("redirect to a %r URL refused" % scheme[:16])
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
        resp = _build_opener().open(req, timeout=timeout)
    except _Refused as e:
        raise _fail(image_id, str(e))
    except urllib.error.HTTPError as e:
        e.close()
        raise _fail(image_id, "HTTP %d %s from %s" % (e.code, e.reason, redact_url(url)))
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


def _open_file(image_id, url):
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


def copy_stream(src, dest, *, image_id, size, hash_algo, expected_hash,
                what="image"):
    """Copy the readable ``src`` into the binary file ``dest``, verifying it.

    ``size`` None means unknown: only ``max_image_size_gb`` bounds the body.
    Flushes and fsyncs ``dest``. Returns :class:`FetchResult`.
    """
    _check_declared(image_id, size, hash_algo, expected_hash)
    limit = size if size is not None else max_image_size()
    sha256 = hashlib.sha256()
    declared = sha256 if hash_algo == "sha256" else hashlib.new(hash_algo)
    total = 0
    while True:
        want = min(CHUNK_SIZE, limit - total + 1)  # +1 to notice an overrun
        try:
            chunk = src.read(want)
        except TimeoutError:
            raise _fail(image_id, "timed out reading the %s after %d bytes"
                        % (what, total))
        except (OSError, http.client.HTTPException) as e:
            raise _fail(image_id, "reading the %s failed after %d bytes: %s"
                        % (what, total, e))
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            if size is not None:
                raise _fail(image_id, "body is longer than the declared size "
                                      "(%d bytes)" % size)
            raise _fail(image_id, "body exceeds image_cache.max_image_size_gb "
                                  "(%d GiB)" % CONF.image_cache.max_image_size_gb)
        sha256.update(chunk)
        if declared is not sha256:
            declared.update(chunk)
        try:
            if len(chunk) <= len(_ZEROS) and chunk == _ZEROS[:len(chunk)]:
                # all zeroes: leave a hole (disk images are mostly empty)
                dest.seek(len(chunk), os.SEEK_CUR)
            else:
                dest.write(chunk)
        except OSError as e:
            raise _fail(image_id, "writing the %s failed: %s" % (what, e))
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


def fetch(url, dest, *, image_id, size, hash_algo, expected_hash):
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
                           hash_algo=hash_algo, expected_hash=expected_hash)
    finally:
        src.close()
