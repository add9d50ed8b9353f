"""The per-host cache of base images, ``<instances_path>/_base``.

Layout (``name`` is ``sha1(image_id).hexdigest()``; image ids are untrusted and
never used in a path)::

    _base/<name>              the base image (raw or qcow2, exactly as verified)
    _base/<name>.info         JSON sidecar, see BaseInfo / _write_sidecar
    _base/.<name>.part-XXXX   a download or import in progress (or a crash's leftover)

Every change to ``<name>`` or ``<name>.info`` happens under the external lock
``computeagent-image-<name>`` in ``CONF.lock_path``: downloads, imports and the
cleaner, which re-checks age and use under the lock (nova LP#1256838). A base is
only ever created by renaming a fully downloaded, hashed and inspected temp file,
after its sidecar is in place, so ``<name>`` existing implies it is complete.

Use from other layers: ``with cache.using(image) as base: <create the overlay>``
keeps the lock while the overlay is created, so even a cleaner configured with a
zero minimum age cannot remove the base in between. ``ensure`` is the same without
the block. Neither is re-entrant: do not call ``ensure``/``import_base`` for the
same image inside ``using``.
"""
import contextlib
import dataclasses
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import stat
import tempfile
import time

from oslo_concurrency import lockutils

from computeagent import exception
from computeagent import utils
from computeagent.conf import CONF
from computeagent.images import fetch
from computeagent.images import inspect
from computeagent.images import qemu_img

LOG = logging.getLogger(__name__)

BASE_NAME_RE = re.compile(r"^[0-9a-f]{40}$")
PART_RE = re.compile(r"^\.([0-9a-f]{40})\.part-")
RESIZE_SUFFIX = "_resize"
SIDECAR_SUFFIX = ".info"
SIDECAR_VERSION = 1
LOCK_PREFIX = "computeagent-image-"
DIGEST_ALGO = "sha256"
CLEAN_BATCH = 64  # bases locked at once by the cleaner
_HASH_BUF = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class BaseInfo:
    """A cached base image, as recorded in its sidecar."""
    path: str
    image_id: str
    disk_format: str       # "raw" or "qcow2": the -F to use for overlays
    virtual_size: int      # bytes
    size: int              # bytes of the base file
    digest: str            # sha256 hex of the base file (compared between hosts)
    downloaded_at: str     # ISO 8601 UTC, e.g. "2026-11-27T07:18:00Z"
    hash_algo: str         # the declared algorithm the base was verified with
    hash: str              # the declared hash (== digest when hash_algo is sha256)
    source: str            # "download", "import" or "rebuilt"
    pinned_until: float = 0.0  # epoch seconds; aging never removes it before then

    def to_dict(self):
        return dataclasses.asdict(self)


def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _file_hash(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while True:
            buf = f.read(_HASH_BUF)
            if not buf:
                break
            h.update(buf)
    return h.hexdigest()


def _check_image_id(image_id):
    if not isinstance(image_id, str) or not image_id:
        raise exception.InvalidInput(reason="image id must be a non-empty string")
    return image_id


def _check_image(image):
    if not isinstance(image, dict):
        raise exception.InvalidInput(reason="image must be a dict")
    missing = [k for k in ("id", "url", "disk_format", "size", "hash_algo", "hash")
               if k not in image]
    if missing:
        raise exception.InvalidInput(reason="image lacks %s" % ", ".join(missing))
    _check_image_id(image["id"])
    if not isinstance(image["url"], str) or not isinstance(image["disk_format"], str):
        raise exception.InvalidInput(reason="image url and disk_format must be strings")
    size = image["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise exception.InvalidInput(reason="image size must be a byte count")
    return image


class ImageCache:
    """The base image cache of one host (see the module docstring)."""

    def __init__(self, instances_path=None, subdirectory_name=None, lock_path=None):
        self.instances_path = os.path.abspath(instances_path or CONF.instances_path)
        self.base_dir = os.path.join(
            self.instances_path, subdirectory_name or CONF.image_cache.subdirectory_name)
        self.lock_path = lock_path or CONF.lock_path

    # -- naming ------------------------------------------------------------------

    @staticmethod
    def base_name(image_id):
        """``sha1(image_id).hexdigest()``: the only form an image id takes on disk."""
        return hashlib.sha1(_check_image_id(image_id).encode("utf-8")).hexdigest()

    def base_path(self, image_id):
        return os.path.join(self.base_dir, self.base_name(image_id))

    def info_path(self, image_id):
        return self.base_path(image_id) + SIDECAR_SUFFIX

    def _path(self, name):
        return os.path.join(self.base_dir, name)

    @contextlib.contextmanager
    def _lock(self, name, blocking=True):
        with lockutils.lock(LOCK_PREFIX + name, external=True,
                            lock_path=self.lock_path, blocking=blocking):
            yield

    def lock(self, image_id):
        """The per-base external lock (a context manager); not re-entrant."""
        return self._lock(self.base_name(image_id))

    # -- sidecar -----------------------------------------------------------------

    def _read_sidecar(self, name):
        """BaseInfo from ``<name>.info``, or None when missing or unreadable."""
        try:
            with open(self._path(name) + SIDECAR_SUFFIX, "rb") as f:
                data = json.loads(f.read(65536))
            if data.get("version") != SIDECAR_VERSION:
                raise ValueError("unknown sidecar version %r" % data.get("version"))
            return BaseInfo(
                path=self._path(name),
                image_id=str(data["image_id"]),
                disk_format=str(data["disk_format"]),
                virtual_size=int(data["virtual_size"]),
                size=int(data["size"]),
                digest=str(data["digest"]),
                downloaded_at=str(data["downloaded_at"]),
                hash_algo=str(data["hash_algo"]),
                hash=str(data["hash"]),
                source=str(data.get("source", "download")),
                pinned_until=float(data.get("pinned_until") or 0.0))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            LOG.warning("Sidecar of base %s is unreadable: %s", name, e)
            return None

    def _write_sidecar(self, name, info):
        """Write ``<name>.info`` atomically (temp file, fsync, rename)."""
        data = {
            "version": SIDECAR_VERSION,
            "image_id": info.image_id,
            "disk_format": info.disk_format,
            "virtual_size": info.virtual_size,
            "size": info.size,
            "digest_algo": DIGEST_ALGO,
            "digest": info.digest,
            "hash_algo": info.hash_algo,
            "hash": info.hash,
            "downloaded_at": info.downloaded_at,
            "source": info.source,
        }
        if info.pinned_until:
            data["pinned_until"] = info.pinned_until
        fd, tmp = tempfile.mkstemp(prefix=".%s.part-info-" % name, dir=self.base_dir)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)     # the agent's own record; only the base is QEMU's
            os.rename(tmp, self._path(name) + SIDECAR_SUFFIX)
        except BaseException:
            _unlink(tmp)
            raise

    def _rebuild_sidecar(self, name, image_id, disk_format):
        """A base without a usable sidecar: re-inspect and re-hash it."""
        path = self._path(name)
        LOG.warning("Base %s of image %s has no usable sidecar; rebuilding it",
                    path, image_id)
        result = inspect.inspect_image(path, disk_format, image_id)
        digest = _file_hash(path, DIGEST_ALGO)
        st = os.stat(path)
        info = BaseInfo(
            path=path, image_id=image_id, disk_format=result.format,
            virtual_size=result.virtual_size, size=st.st_size, digest=digest,
            downloaded_at=datetime.datetime.fromtimestamp(
                st.st_mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            hash_algo=DIGEST_ALGO, hash=digest, source="rebuilt")
        self._write_sidecar(name, info)
        return info

    # -- verification of an existing base ------------------------------------------

    def _verify(self, name, info, image_id, disk_format, size, hash_algo, expected):
        """Check an existing base against what the caller declares; maybe record
        the declared hash in the sidecar. Returns the (possibly updated) info."""
        def bad(reason):
            LOG.error("Cached base %s of image %s: %s", info.path, image_id, reason)
            return exception.ImageUnacceptable(
                image_id=image_id, reason="cached base %s" % reason)

        if info.image_id != image_id:
            raise bad("belongs to image %r" % info.image_id)
        if info.disk_format != disk_format:
            raise bad("is %s but disk_format is %s" % (info.disk_format, disk_format))
        if size is not None and info.size != size:
            raise bad("has %d bytes, the declared size is %d" % (info.size, size))
        expected = expected.lower()
        if hash_algo == DIGEST_ALGO:
            known = info.digest
        elif info.hash_algo == hash_algo:
            known = info.hash
        else:
            known = _file_hash(info.path, hash_algo)
            if hmac.compare_digest(known, expected):
                info = dataclasses.replace(info, hash_algo=hash_algo, hash=known)
                self._write_sidecar(name, info)
        if not hmac.compare_digest(known, expected):
            raise bad("does not match the declared %s hash" % hash_algo)
        return info

    # -- creation ----------------------------------------------------------------

    def _install(self, name, image_id, disk_format, produce, source):
        """Create base ``name``: ``produce(fileobj) -> FetchResult`` fills a temp
        file, which is inspected, given its sidecar and renamed into place. On any
        failure nothing is left behind. Caller holds the lock."""
        os.makedirs(self.base_dir, mode=0o755, exist_ok=True)
        path = self._path(name)
        fd, tmp = tempfile.mkstemp(prefix=".%s.part-" % name, dir=self.base_dir)
        sidecar_written = False
        try:
            with os.fdopen(fd, "wb") as f:
                result = produce(f)
            checked = inspect.inspect_image(tmp, disk_format, image_id)
            os.chmod(tmp, 0o644)
            info = BaseInfo(
                path=path, image_id=image_id, disk_format=checked.format,
                virtual_size=checked.virtual_size, size=result.size,
                digest=result.sha256, downloaded_at=_now_iso(),
                hash_algo=result.hash_algo, hash=result.hash, source=source)
            self._write_sidecar(name, info)
            sidecar_written = True
            os.rename(tmp, path)
            _fsync_dir(self.base_dir)
        except BaseException:
            _unlink(tmp)
            if sidecar_written:
                _unlink(path + SIDECAR_SUFFIX)
            raise
        LOG.info("Cached image %s as %s (%s, %d bytes, sha256 %s)", image_id, path,
                 info.disk_format, info.size, info.digest)
        return info

    def _ensure_locked(self, image, progress=None):
        image_id = image["id"]
        name = self.base_name(image_id)
        path = self._path(name)
        if os.path.lexists(path):
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise exception.ImageUnacceptable(
                    image_id=image_id, reason="cached base is not a regular file")
            info = (self._read_sidecar(name)
                    or self._rebuild_sidecar(name, image_id, image["disk_format"]))
            info = self._verify(name, info, image_id, image["disk_format"],
                                image["size"], image["hash_algo"], str(image["hash"]))
            os.utime(path)
            return info

        def produce(f):
            return fetch.fetch(image["url"], f, image_id=image_id, size=image["size"],
                               hash_algo=image["hash_algo"],
                               expected_hash=image["hash"], progress=progress)
        return self._install(name, image_id, image["disk_format"], produce, "download")

    @contextlib.contextmanager
    def using(self, image, progress=None):
        """Ensure ``image`` is cached and hold its base lock for the block.

        Yields :class:`BaseInfo`. A download already running for the same image
        (a pre-cache, a spawn, another migration, in this process or another)
        holds the lock: this waits for it and then reuses its base (no second
        GET); a pre-cached base costs one sidecar read and a digest compare.
        ``progress(bytes_done)`` is called while downloading.
        """
        _check_image(image)
        with self._lock(self.base_name(image["id"])):
            yield self._ensure_locked(image, progress)

    def ensure(self, image, progress=None):
        """Return :class:`BaseInfo` of ``image``, downloading it when missing.

        ``image`` = {"id", "url", "disk_format", "size", "hash_algo", "hash"}.
        Exactly one download happens however many threads/processes ask at once.
        Touches the base's mtime.

        :raises ImageDownloadFailed: the download failed (nothing is cached).
        :raises ImageUnacceptable: the content was rejected, or the cached base
            does not match the declared image.
        :raises InvalidInput: ``image`` is malformed.
        """
        with self.using(image, progress) as info:
            return info

    def pin(self, image_id, until):
        """Keep the cached base of ``image_id`` from aging out until ``until``
        (epoch seconds; 0 unpins). Recorded in the sidecar under the base lock.
        Returns the updated :class:`BaseInfo`, or None when it is not cached."""
        name = self.base_name(image_id)
        with self._lock(name):
            if not os.path.isfile(self._path(name)):
                return None
            info = self._read_sidecar(name)
            if info is None:
                return None
            info = dataclasses.replace(info, pinned_until=float(until or 0.0))
            self._write_sidecar(name, info)
            return info

    def _pinned(self, name, now=None):
        info = self._read_sidecar(name)
        return info is not None and info.pinned_until > (now or time.time())

    def ensure_from(self, image, produce, source):
        """Like :meth:`ensure`, but a missing base is filled by
        ``produce(fileobj) -> FetchResult`` (which must verify the image's
        declared size and hash, e.g. with ``fetch.VerifyingWriter``) instead of
        a download; the same inspection, sidecar and rename follow."""
        _check_image(image)
        image_id = image["id"]
        name = self.base_name(image_id)
        with self._lock(name):
            if os.path.lexists(self._path(name)):
                return self._ensure_locked(image)
            return self._install(name, image_id, image["disk_format"], produce, source)

    def import_base(self, image_id, src, expected_sha256, disk_format):
        """Cache a base copied from elsewhere (a peer hypervisor).

        ``src`` is a path or a readable binary file object (not closed here). The
        content must hash to ``expected_sha256`` and pass the same inspection as a
        download. If the base is already cached it must have that digest. Returns
        :class:`BaseInfo`; touches the base's mtime.

        :raises ImageDownloadFailed: copy failed or sha256 mismatch.
        :raises ImageUnacceptable: rejected content, or a different base cached.
        """
        _check_image_id(image_id)
        name = self.base_name(image_id)
        path = self._path(name)
        with self._lock(name):
            if os.path.lexists(path):
                info = (self._read_sidecar(name)
                        or self._rebuild_sidecar(name, image_id, disk_format))
                info = self._verify(name, info, image_id, disk_format, None,
                                    DIGEST_ALGO, str(expected_sha256))
                os.utime(path)
                return info

            def produce(f):
                if isinstance(src, (str, bytes, os.PathLike)):
                    with open(src, "rb") as s:
                        return fetch.copy_stream(
                            s, f, image_id=image_id, size=None, hash_algo=DIGEST_ALGO,
                            expected_hash=expected_sha256, what="imported base")
                return fetch.copy_stream(
                    src, f, image_id=image_id, size=None, hash_algo=DIGEST_ALGO,
                    expected_hash=expected_sha256, what="imported base")
            return self._install(name, image_id, disk_format, produce, "import")

    # -- queries -----------------------------------------------------------------

    def info(self, image_id):
        """:class:`BaseInfo` of a cached image, or None (also when its sidecar is
        missing or unreadable). Does not touch the base."""
        name = self.base_name(image_id)
        if not os.path.isfile(self._path(name)):
            return None
        return self._read_sidecar(name)

    def digest(self, image_id):
        """sha256 hex of the cached base, or None when not cached."""
        info = self.info(image_id)
        return info.digest if info else None

    def _base_names(self):
        try:
            entries = list(os.scandir(self.base_dir))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries
                      if BASE_NAME_RE.match(e.name) and e.is_file(follow_symlinks=False))

    def _instance_disks(self):
        """``<instances_path>/<uuid>[_resize]/disk`` files (only canonical uuids)."""
        try:
            entries = list(os.scandir(self.instances_path))
        except FileNotFoundError:
            return []
        disks = []
        for e in sorted(entries, key=lambda e: e.name):
            uuid = e.name[:-len(RESIZE_SUFFIX)] if e.name.endswith(RESIZE_SUFFIX) else e.name
            if not utils.UUID_RE.match(uuid) or not e.is_dir(follow_symlinks=False):
                continue
            disk = os.path.join(e.path, "disk")
            try:
                if stat.S_ISREG(os.lstat(disk).st_mode):
                    disks.append(disk)
            except FileNotFoundError:
                pass
        return disks

    def _scan_in_use(self):
        """(set of base paths used by some instance disk's real backing chain,
        list of disks whose chain could not be read)."""
        real_base_dir = os.path.realpath(self.base_dir)
        used, unknown = set(), []

        def note(image, key):
            value = image.get(key)
            if not isinstance(value, str) or not value or value.startswith("json:"):
                return
            if not os.path.isabs(value):
                value = os.path.join(os.path.dirname(image.get("filename", "/")), value)
            real = os.path.realpath(value)
            if (os.path.dirname(real) == real_base_dir
                    and BASE_NAME_RE.match(os.path.basename(real))):
                used.add(self._path(os.path.basename(real)))

        for disk in self._instance_disks():
            try:
                with open(disk, "rb") as f:
                    magic = f.read(4)
            except OSError as e:
                LOG.error("Cannot read instance disk %s: %s", disk, e)
                unknown.append(disk)
                continue
            if magic != inspect.QCOW2_MAGIC:
                continue  # not a qcow2 overlay (a raw disk has no backing file)
            try:
                chain = qemu_img.backing_chain(disk, "qcow2")
            except exception.QemuImgError as e:
                # e.g. a backing file is missing: the top's own header still names it
                LOG.warning("Backing chain of %s unreadable (%s); using its header",
                            disk, e)
                try:
                    chain = [qemu_img.info(disk, "qcow2")]
                except exception.QemuImgError as e2:
                    LOG.error("Cannot read instance disk %s: %s", disk, e2)
                    unknown.append(disk)
                    continue
            for image in chain:
                for key in ("filename", "backing-filename", "full-backing-filename"):
                    note(image, key)
        return used, unknown

    def in_use_bases(self):
        """Set of base paths referenced by the real backing chain of some
        ``<instances_path>/<uuid>/disk`` (or ``<uuid>_resize/disk``)."""
        return self._scan_in_use()[0]

    def list_bases(self):
        """One dict per cached base: path, image_id (None without a sidecar), size,
        age (seconds since last use), in_use, disk_format, virtual_size, digest."""
        used = self.in_use_bases()
        now = time.time()
        out = []
        for name in self._base_names():
            path = self._path(name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            info = self._read_sidecar(name)
            out.append({
                "path": path,
                "image_id": info.image_id if info else None,
                "size": st.st_size,
                "age": max(0.0, now - st.st_mtime),
                "in_use": path in used,
                "disk_format": info.disk_format if info else None,
                "virtual_size": info.virtual_size if info else None,
                "digest": info.digest if info else None,
                "source": info.source if info else None,
                "pinned_until": info.pinned_until if info else 0.0,
                "downloaded_at": info.downloaded_at if info else None,
            })
        return out

    # -- aging -------------------------------------------------------------------

    def clean(self, min_age_seconds=None, dry_run=False):
        """Remove bases no instance disk uses and unused for ``min_age_seconds``
        (default ``remove_unused_original_minimum_age_seconds``), with sidecars.
        A base pinned (``pin``) until a time still to come is never removed.

        Each candidate's lock is taken (without waiting: a busy base is skipped)
        and age and use are re-checked under the locks (in batches of CLEAN_BATCH).
        As soon as any instance disk's chain cannot be read, nothing (more) is
        removed. ``dry_run`` returns what would be
        removed and removes nothing. Also removes leftovers of crashed downloads and
        orphaned sidecars (not reported). Returns the removed base paths.
        """
        if min_age_seconds is None:
            min_age_seconds = CONF.image_cache.remove_unused_original_minimum_age_seconds
        removed = self._clean_bases(min_age_seconds, dry_run)
        if not dry_run:
            self._remove_leftovers()
        return removed

    def _clean_bases(self, min_age_seconds, dry_run):
        names = self._base_names()
        if not names:
            return []
        used, unknown = self._scan_in_use()
        if unknown:
            LOG.error("Not cleaning %s: backing chains of %s are unknown",
                      self.base_dir, ", ".join(unknown))
            return []
        candidates = [n for n in names
                      if self._path(n) not in used and self._age(n) >= min_age_seconds
                      and not self._pinned(n)]
        if not candidates:
            return []
        removed = []
        # Lock in batches: every held lock is an open file.
        for i in range(0, len(candidates), CLEAN_BATCH):
            batch = self._clean_batch(candidates[i:i + CLEAN_BATCH], min_age_seconds,
                                      dry_run)
            if batch is None:
                break
            removed.extend(batch)
        return removed

    def _clean_batch(self, candidates, min_age_seconds, dry_run):
        """Lock ``candidates`` (skipping busy ones), re-check, remove. None when
        an instance disk's chain is unknown (stop cleaning)."""
        removed = []
        with contextlib.ExitStack() as stack:
            locked = []
            for name in candidates:
                try:
                    stack.enter_context(self._lock(name, blocking=False))
                except lockutils.AcquireLockFailedException:
                    LOG.info("Base %s is busy; not removing it", self._path(name))
                    continue
                locked.append(name)
            if not locked:
                return []
            # Re-check under the locks: a spawn may have started using a base.
            used, unknown = self._scan_in_use()
            if unknown:
                LOG.error("Not cleaning %s: backing chains of %s are unknown",
                          self.base_dir, ", ".join(unknown))
                return None
            for name in locked:
                path = self._path(name)
                if (path in used or self._age(name) < min_age_seconds
                        or self._pinned(name)):
                    continue
                if not dry_run:
                    if not _unlink(path):
                        continue
                    _unlink(path + SIDECAR_SUFFIX)
                    LOG.info("Removed unused base %s", path)
                removed.append(path)
            if removed and not dry_run:
                _fsync_dir(self.base_dir)
        return removed

    def _age(self, name):
        try:
            return time.time() - os.lstat(self._path(name)).st_mtime
        except FileNotFoundError:
            return -1.0

    def _remove_leftovers(self):
        """Temp files of crashed downloads and sidecars without a base. Whoever
        creates them holds the base's lock, so with the lock free they are stale."""
        try:
            entries = [e.name for e in os.scandir(self.base_dir)]
        except FileNotFoundError:
            return
        by_name = {}
        for entry in entries:
            m = PART_RE.match(entry)
            if m:
                by_name.setdefault(m.group(1), []).append(entry)
            elif entry.endswith(SIDECAR_SUFFIX):
                name = entry[:-len(SIDECAR_SUFFIX)]
                if BASE_NAME_RE.match(name) and name not in entries:
                    by_name.setdefault(name, []).append(entry)
        for name, files in sorted(by_name.items()):
            try:
                with self._lock(name, blocking=False):
                    for f in files:
                        if f.endswith(SIDECAR_SUFFIX) and os.path.exists(self._path(name)):
                            continue
                        if _unlink(self._path(f)):
                            LOG.info("Removed stale %s", self._path(f))
            except lockutils.AcquireLockFailedException:
                continue
