"""Prometheus endpoint (``[metrics] port``, ``bind_address``; off by default).

The flows are not instrumented: the migration and image figures come from what the
agent already does in public -- its notifications (``instance.live_migration.*``,
``instance.resize.*``, ...) and its image cache's ``using``/``ensure`` -- and the rest is read
on each scrape (migration records in the DB, the libvirt connection, the RPC server,
the task queue, the running jobs' dirty rate).

Names: ``computeagent_*``; migration ``kind`` is ``live`` or ``resize``, ``outcome``
``completed``, ``failed`` or ``cancelled``.
"""
import contextlib
import logging
import os
import threading
import time

from prometheus_client import core
from prometheus_client import exposition
from prometheus_client import registry as prom_registry
from prometheus_client import Counter, Histogram

from computeagent import systemd

LOG = logging.getLogger(__name__)

_KINDS = {"live_migration": "live", "resize": "resize"}
_ACTIVE = ("queued", "preparing", "running", "post-migrating", "migrating", "finishing",
           "confirming", "reverting")
_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_DOWNTIME_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


class Metrics:
    def __init__(self, svc):
        self.svc = svc
        self.registry = prom_registry.CollectorRegistry()
        r = self.registry
        self.notifications = Counter(
            "computeagent_notifications", "Notifications the agent sent, by event type",
            ["event_type", "priority"], registry=r)
        self.migrations = Counter(
            "computeagent_migrations", "Migrations this host finished as their source, "
            "by kind and outcome", ["kind", "outcome"], registry=r)
        self.duration = Histogram(
            "computeagent_migration_duration_seconds", "From accepted to finished (to "
            "verify-resize for a resize), at the source", ["kind", "outcome"],
            buckets=_DURATION_BUCKETS, registry=r)
        self.downtime = Histogram(
            "computeagent_live_migration_downtime_seconds", "Guest downtime at the "
            "switch-over of completed live migrations", buckets=_DOWNTIME_BUCKETS,
            registry=r)
        self.bytes = Counter(
            "computeagent_migration_bytes", "Bytes copied by finished migrations "
            "(total, disk, memory)", ["kind", "part"], registry=r)
        self.chain_errors = Counter(
            "computeagent_backing_chain_errors", "Backing-chain checks that failed "
            "after a live migration", registry=r)
        self.cache_requests = Counter(
            "computeagent_image_cache_requests", "Image cache look-ups (hit: the base "
            "was there)", ["result"], registry=r)
        self.cache_downloads = Counter(
            "computeagent_image_cache_downloads", "Bases the cache fetched", registry=r)
        self.cache_download_bytes = Counter(
            "computeagent_image_cache_download_bytes", "Bytes of the bases the cache "
            "fetched", registry=r)
        self.cache_failures = Counter(
            "computeagent_image_cache_failures", "Image cache look-ups that failed",
            registry=r)
        r.register(_ScrapeCollector(svc))
        self._started = {}
        self._lock = threading.Lock()
        self._server = None

    # -- from notifications ------------------------------------------------
    def on_notification(self, event_type, payload, error=False):
        try:
            self._observe(event_type, payload or {}, error)
        except Exception:   # metrics never break what is being reported
            LOG.exception("metrics: cannot account for %s", event_type)

    def _observe(self, event_type, payload, error):
        self.notifications.labels(event_type, "error" if error else "info").inc()
        parts = event_type.split(".")
        if len(parts) != 3 or parts[0] != "instance":
            return
        _, action, phase = parts
        if action == "live_migration" and phase == "chain_error":
            self.chain_errors.inc()
            return
        kind = _KINDS.get(action)
        mid = payload.get("migration_id")
        if kind is None or not mid:
            return
        now = time.monotonic()
        if phase == "start":
            with self._lock:
                self._started[mid] = now
                if len(self._started) > 10000:   # lost ends: keep memory bounded
                    self._started.pop(next(iter(self._started)))
            return
        if phase not in ("end", "error"):
            return
        with self._lock:
            t0 = self._started.pop(mid, None)
        if t0 is None:
            return    # not started here (the destination's view, or before a restart)
        mig = self._migration(mid)
        outcome = "completed" if phase == "end" else (
            "cancelled" if mig and mig.get("status") == "cancelled" else "failed")
        self.migrations.labels(kind, outcome).inc()
        self.duration.labels(kind, outcome).observe(now - t0)
        downtime = payload.get("downtime_ms")
        if kind == "live" and outcome == "completed" and downtime is not None:
            self.downtime.observe(downtime / 1000.0)
        if mig:
            for part, key in (("total", "data_processed"), ("disk", "disk_processed"),
                              ("memory", "memory_processed")):
                if mig.get(key):
                    self.bytes.labels(kind, part).inc(mig[key])

    def _migration(self, mid):
        try:
            return self.svc.manager.db.migration_get(mid)
        except Exception:
            return None

    # -- image cache --------------------------------------------------------
    def instrument_image_cache(self, cache):
        """Count hits, misses, downloads and their bytes around ``cache.using``
        (``ensure`` goes through it too)."""
        using = cache.using

        @contextlib.contextmanager
        def counted_using(image, *args, **kw):
            try:
                path = cache.base_path(image.get("id"))
                existed = os.path.exists(path)
            except Exception:
                path, existed = None, False
            entered = False
            try:
                with using(image, *args, **kw) as info:
                    entered = True
                    self.cache_requests.labels("hit" if existed else "miss").inc()
                    if not existed and path and os.path.exists(path):
                        self.cache_downloads.inc()
                        self.cache_download_bytes.inc(os.path.getsize(path))
                    yield info
            except Exception:
                if not entered:
                    self.cache_failures.inc()
                raise
        cache.using = counted_using
        return cache

    # -- endpoint ------------------------------------------------------------
    def serve(self, addr, port):
        self._server, _thread = exposition.start_http_server(port, addr=addr,
                                                             registry=self.registry)
        LOG.info("Prometheus metrics on http://%s:%d/metrics", addr, port)

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self):
        return exposition.generate_latest(self.registry).decode()


class _ScrapeCollector(prom_registry.Collector):
    """Gauges read at scrape time."""

    def __init__(self, svc):
        self.svc = svc

    def collect(self):
        svc = self.svc
        host = svc.host
        g = core.GaugeMetricFamily
        yield g("computeagent_libvirt_connected", "1 while the libvirt connection is up",
                value=1 if host is not None and host.connected else 0)
        yield core.CounterMetricFamily(
            "computeagent_libvirt_reconnects", "Times the libvirt connection came back",
            value=getattr(host, "reconnects", 0) or 0)
        yield g("computeagent_rpc_server_up", "1 while the RPC server's listener runs "
                "(what the systemd watchdog checks too)",
                value=1 if systemd.rpc_server_healthy(svc.server) else 0)
        manager = svc.manager
        if manager is None:
            return
        pool = getattr(manager, "pool", None)
        queue = getattr(pool, "_work_queue", None)
        yield g("computeagent_task_queue_depth", "Long tasks waiting for a worker "
                "thread ([DEFAULT] long_task_workers)",
                value=queue.qsize() if queue is not None else 0)
        active = g("computeagent_migrations_in_progress", "Migrations not finished, by "
                   "kind, status and this host's role", labels=["kind", "status", "role"])
        dirty = g("computeagent_live_migration_dirty_rate_bytes", "Guest memory dirty "
                  "rate of running outgoing live migrations, bytes/s",
                  labels=["migration_id"])
        counts: dict[tuple[str, str, str], int] = {}
        try:
            migs = manager.db.migration_get_all(statuses=_ACTIVE)
        except Exception:
            migs = []
        me = svc.conf.host
        for m in migs:
            role = "source" if m["source"] == me else "dest"
            key = (m["kind"], m["status"], role)
            counts[key] = counts.get(key, 0) + 1
            if m["kind"] == "live" and m["status"] == "running" and role == "source":
                rate = _dirty_rate(manager, m["instance_uuid"])
                if rate is not None:
                    dirty.add_metric([m["id"]], rate)
        for (kind, status, role), n in sorted(counts.items()):
            active.add_metric([kind, status, role], n)
        yield active
        yield dirty
        yield g("computeagent_instances", "Instances this host records",
                value=_count(manager))


def _dirty_rate(manager, uuid):
    from computeagent.virt import jobstats
    try:
        dom = manager.driver.lookup(uuid)
    except Exception:
        return None
    return jobstats.dirty_rate_bytes(dom) if dom is not None else None


def _count(manager):
    try:
        return len(manager.db.instance_get_all(host=manager.host))
    except Exception:
        return 0


def setup(conf, svc, notifier, cache):
    """Metrics of ``svc``, fed by ``notifier`` and ``cache``; served if configured."""
    m = Metrics(svc)
    notifier.observers.append(m.on_notification)
    m.instrument_image_cache(cache)
    if conf.metrics.port:
        m.serve(conf.metrics.bind_address, conf.metrics.port)
    return m
