"""Image pre-caching as managed state (RPC 1.5 ``cache_images``/``get_image_cache``).

A scheduler asks hosts to fetch bases before it places or migrates anything onto
them. Each image gets a record (table ``image_cache``) that walks

    queued -> downloading -> cached
                          \\-> failed (failure_reason says why; nothing is cached)

with bytes done/total (while it downloads, bytes done live in memory and
``get_image_cache`` reads them from there; the record gets them at the end), the digest, where the bytes came from (``source``) and a pin.

One download per image per host, however many requests arrive: requests for an
image already queued or downloading here join it (in-process), and the download
itself runs through ``ImageCache.ensure``, under the same external per-base lock
and the same checks as spawn and the migration flows, so a spawn or a
``pre_live_migration`` for the same image waits for it and reuses its base (and
vice versa). Downloads run in a bounded pool of ``[image_cache]
precache_workers`` threads, apart from the spawn/migration pool.

The base file and its sidecar stay the truth about what is cached (the pin lives
in the sidecar, so the cache's aging honours it whoever runs it); the record says
what was asked and how it went. ``get_image_cache`` merges both: a base nobody
pre-cached (spawned, migrated) is listed as ``cached`` too, and the record of a
base that aged out is dropped.
"""
import concurrent.futures
import datetime
import logging
import os
import threading
import time

from computeagent import context
from computeagent import exception
from computeagent.db import image_cache as records
from computeagent.images import peer as peer_fetch

LOG = logging.getLogger(__name__)

QUEUED = "queued"
DOWNLOADING = "downloading"
CACHED = "cached"
FAILED = "failed"
STATES = (QUEUED, DOWNLOADING, CACHED, FAILED)


def _utc(ts):
    """Naive UTC datetime from epoch seconds (the DB's convention)."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).replace(tzinfo=None)


def _iso(value):
    if value is None:
        return None
    if isinstance(value, (int, float)):
        if not value:
            return None
        value = _utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(dt):
    return dt.replace(tzinfo=datetime.timezone.utc).timestamp() if dt else 0.0


def _source_of(info, peer=None):
    if peer:
        return "peer:%s" % peer
    if info.source == "import":
        return "peer"
    return "image-server"


class ImageCacheFlows:
    def __init__(self, manager, peer_api=None):
        self.m = manager
        self.peer_api = peer_api
        self.db = manager.db
        self.cache = manager.image_cache
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=manager.conf.image_cache.precache_workers,
            thread_name_prefix="precache")
        self._lock = threading.Lock()
        self._active = {}  # image_id -> Future of its pre-cache here
        # image_id -> bytes received so far, while it downloads: kept in memory (a
        # crash restarts the download anyway), so the data path never waits for a
        # database commit (an fsync that, on ext4 data=ordered, also flushes what
        # the download wrote so far)
        self._progress = {}

    # -- RPC -----------------------------------------------------------------
    def cache_images(self, ctx, images, pin_until=None, peers=None):
        """Queue a pre-cache of every image (validated by rpc/schema.py).

        ``pin_until`` (a naive UTC datetime or None) pins every base until then
        (a time already past unpins); None leaves an existing pin as it is.
        ``peers``: hypervisors to fetch from when the image source fails.
        """
        peers = [p for p in (peers or []) if p != self.m.host]
        for image in images:
            image_id = image["id"]
            with self._lock:
                rec = records.get(self.db, image_id)
                pin = pin_until
                if pin is None and rec is not None:
                    pin = rec["pinned_until"]
                if image_id in self._active:
                    LOG.info("pre-cache of %s already running here; joining it",
                             image_id)
                    records.upsert(self.db, image_id, pinned_until=pin)
                    continue
                records.upsert(self.db, image_id, state=QUEUED, image=dict(image),
                               bytes_done=0, bytes_total=image["size"],
                               failure_reason=None, pinned_until=pin,
                               disk_format=image["disk_format"],
                               request_id=ctx.request_id)
                self._active[image_id] = self.pool.submit(self._run, ctx, image, peers)

    def get_image_cache(self, ctx):
        """Every image of this host's cache: records merged with the bases."""
        bases = {b["image_id"]: b for b in self.cache.list_bases() if b["image_id"]}
        out = []
        for rec in records.get_all(self.db):
            base = bases.pop(rec["image_id"], None)
            if rec["state"] == CACHED and base is None:
                # aged out (or removed by hand) since: the record is stale
                records.delete(self.db, rec["image_id"])
                continue
            row = self._row(rec, base)
            if row["state"] == DOWNLOADING and rec["image_id"] in self._progress:
                row["bytes_done"] = self._progress[rec["image_id"]]
            out.append(row)
        for image_id, base in sorted(bases.items()):
            out.append(self._row(None, base, image_id))
        return out

    @staticmethod
    def _row(rec, base, image_id=None):
        row = {
            "image_id": rec["image_id"] if rec else image_id,
            "state": rec["state"] if rec else CACHED,
            "bytes_done": rec["bytes_done"] if rec else base["size"],
            "bytes_total": rec["bytes_total"] if rec else base["size"],
            "digest": rec["digest"] if rec else None,
            "disk_format": rec["disk_format"] if rec else None,
            "source": rec["source"] if rec else None,
            "failure_reason": rec["failure_reason"] if rec else None,
            "pinned_until": _iso(rec["pinned_until"]) if rec else None,
            "last_used": None, "in_use": False, "path": None,
            "request_id": rec["request_id"] if rec else None,
        }
        if base is not None:
            row.update(
                digest=base["digest"], disk_format=base["disk_format"],
                path=base["path"], in_use=base["in_use"],
                last_used=_iso(time.time() - base["age"]),
                pinned_until=(_iso(base["pinned_until"])
                              if base["pinned_until"] > time.time() else None))
            if row["source"] is None:
                row["source"] = ("peer" if base["source"] == "import"
                                 else "image-server")
            if row["state"] != CACHED:
                row["state"] = CACHED if rec is None else row["state"]
        return row

    # -- the work ------------------------------------------------------------
    def _run(self, ctx, image, peers=()):
        context.adopt(ctx)
        image_id = image["id"]
        try:
            self._precache(ctx, image, peers)
        except Exception:
            LOG.exception("pre-cache of %s failed unexpectedly", image_id)
        finally:
            with self._lock:
                self._active.pop(image_id, None)

    def _precache(self, ctx, image, peers=()):
        image_id = image["id"]
        records.upsert(self.db, image_id, state=DOWNLOADING)
        self._progress[image_id] = 0

        def progress(n):      # on the data path: memory only
            self._progress[image_id] = n

        def progress_end():   # before the final record write, never after it
            self._progress.pop(image_id, None)
        try:
            self._fetch(ctx, image, peers, progress, progress_end)
        finally:
            progress_end()

    def _fetch(self, ctx, image, peers, progress, progress_end):
        image_id = image["id"]
        had = os.path.exists(self.cache.base_path(image_id))
        peer = None
        try:
            try:
                info = self.cache.ensure(image, progress=progress)
            except exception.ImageDownloadFailed as e:
                if not peers:
                    raise
                info, peer = self._from_peers(ctx, image, peers, e, progress)
            finally:
                progress_end()
        except (exception.ImageDownloadFailed, exception.ImageUnacceptable,
                exception.InvalidInput) as e:
            records.upsert(self.db, image_id, state=FAILED,
                           failure_reason=str(e)[:4000])
            LOG.warning("pre-cache of %s failed: %s", image_id, e)
            return
        except Exception as e:
            records.upsert(self.db, image_id, state=FAILED,
                           failure_reason=("%s: %s" % (type(e).__name__, e))[:4000])
            raise
        rec = records.get(self.db, image_id)
        pin = rec["pinned_until"] if rec else None
        if pin is not None and _epoch(pin) != info.pinned_until:
            info = self.cache.pin(image_id, _epoch(pin)) or info
        source = _source_of(info, peer)
        if had and rec and rec["source"]:
            source = rec["source"]
        records.upsert(self.db, image_id, state=CACHED, bytes_done=info.size,
                       bytes_total=info.size, digest=info.digest,
                       disk_format=info.disk_format, source=source,
                       failure_reason=None, last_used=_utc(time.time()))
        LOG.info("pre-cached image %s (%s, %d bytes, from %s%s)", image_id,
                 info.digest, info.size, source, ", already here" if had else "")

    def _from_peers(self, ctx, image, peers, first_error, progress):
        """The image source failed: fetch from the first peer that reports the
        image cached (with the declared digest when it is a sha256). Returns
        (BaseInfo, peer host); raises ImageDownloadFailed naming every attempt."""
        image_id = image["id"]
        reasons = ["image source: %s" % first_error.kwargs.get("reason", first_error)]
        for host in peers:
            try:
                theirs = {r["image_id"]: r for r in
                          self.peer_api.get_image_cache(context.to_rpc(ctx), host)}
            except Exception as e:
                reasons.append("peer %s: cannot ask it (%s)" % (host, e))
                continue
            row = theirs.get(image_id)
            if not row or row["state"] != CACHED:
                reasons.append("peer %s: does not have it" % host)
                continue
            if image["hash_algo"] == "sha256" and row["digest"] != image["hash"]:
                reasons.append("peer %s: has digest %s" % (host, row["digest"]))
                continue
            uri = self.m.driver.peer_uri(host)
            LOG.info("image source failed for %s (%s); fetching it from peer %s",
                     image_id, first_error, host)
            records.upsert(self.db, image_id, bytes_done=0, source="peer:%s" % host)
            try:
                return peer_fetch.pull_base(self.cache, uri, image, progress), host
            except (exception.ImageDownloadFailed, exception.ImageUnacceptable) as e:
                reasons.append("peer %s: %s" % (host, e.kwargs.get("reason", e)))
        raise exception.ImageDownloadFailed(image_id=image_id,
                                            reason="; ".join(reasons))

    def recover(self):
        """After a restart: a pre-cache that was queued or running is gone
        with the old process (its temp file is removed by the cache's cleaner)."""
        for rec in records.get_all(self.db, states=(QUEUED, DOWNLOADING)):
            records.upsert(self.db, rec["image_id"], state=FAILED,
                           failure_reason="the agent restarted during the pre-cache; "
                                          "ask again")

    def wait_idle(self, timeout=None):
        """Wait for every pre-cache queued so far (tests, graceful stop)."""
        with self._lock:
            futures = list(self._active.values())
        concurrent.futures.wait(futures, timeout=timeout)

    def shutdown(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
