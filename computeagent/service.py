"""Assembles the agent: database, libvirt host, manager, RPC server and the
periodic tasks (plain threads waiting on an Event; no eventlet, no greenthreads)."""
import logging
import os
import threading
import time

import oslo_messaging as messaging

from computeagent.db import api as db_api
from computeagent.images import cache as image_cache
from computeagent.compute import live_migration
from computeagent.compute import manager as manager_mod
from computeagent import metrics
from computeagent import notifications
from computeagent import systemd
from computeagent.rpc import api as rpc_api
from computeagent.rpc import server as rpc_server
from computeagent.rpc import watchdog as rpc_watchdog
from computeagent.virt import driver as vdriver
from computeagent.virt import host as vhost
from computeagent.virt import transport as vtransport

LOG = logging.getLogger(__name__)
# the rest of a stop after the migrations (pool, libvirt, metrics)
STOP_MARGIN_SECONDS = 5


class Periodic(threading.Thread):
    def __init__(self, name, interval, fn, stop_event):
        super().__init__(name=name, daemon=True)
        self.interval, self.fn, self.stop_event = interval, fn, stop_event

    def run(self):
        while not self.stop_event.wait(self.interval):
            try:
                self.fn()
            except Exception:
                LOG.exception("periodic task %s failed", self.name)


class AgentService:
    def __init__(self, conf, transport=None):
        self.conf = conf
        self.transport = transport
        self._stop = threading.Event()
        self.server = None
        self.manager = None
        self.host = None
        self.supervisor = systemd.Supervisor(self)

    def start(self):
        conf = self.conf
        # Refuse (or, with allow_insecure_transport, warn loudly about) peer
        # transports without authentication/encryption before anything starts.
        vtransport.check(conf, LOG)
        os.makedirs(conf.state_path, exist_ok=True)
        os.makedirs(conf.lock_path, exist_ok=True)
        os.makedirs(conf.instances_path, exist_ok=True)
        db = db_api.Database(conf.database.connection)
        db.sync()
        if self.transport is None:
            self.transport = rpc_api.get_transport(conf)
        notif_transport = messaging.get_notification_transport(conf)
        notifier = notifications.Notifier(notif_transport, conf.host)
        self.host = vhost.Host(conf.libvirt.connection_uri,
                               lifecycle_cb=self._on_lifecycle,
                               reconnect_cb=self._on_reconnect,
                               reconnect_interval=conf.libvirt.reconnect_interval)
        driver = vdriver.LibvirtDriver(conf, self.host)
        cache = image_cache.ImageCache(conf.instances_path)
        self.metrics = metrics.setup(conf, self, notifier, cache)
        peer_api = rpc_api.ComputeAgentAPI(self.transport, timeout=conf.rpc_call_timeout,
                                           own_host=conf.host)
        self.manager = manager_mod.ComputeManager(conf, db, driver, cache, notifier,
                                                  peer_api)
        self.host.start()
        self.manager.init_host()
        self.server = rpc_server.get_server(self.transport, conf, self.manager)
        self._start_server()  # an unreachable broker must not hold start-up or SIGTERM
        self.watchdog = rpc_watchdog.start(self)  # restarts a deaf RPC server
        Periodic("power-sync", conf.sync_power_state_interval,
                 self.manager.sync_power_states, self._stop).start()
        Periodic("console-log-bound", conf.sync_power_state_interval,
                 self.manager.bound_console_logs, self._stop).start()
        Periodic("resize-auto-confirm", 5, self.manager.resize.auto_confirm,
                 self._stop).start()
        if conf.image_cache_manager_interval > 0:
            Periodic("image-cache", conf.image_cache_manager_interval,
                     self.manager.cleanup_image_cache, self._stop).start()
        LOG.info("computeagent %s serving topic %s", conf.host, conf.rpc_topic)
        self.supervisor.ready()   # systemd: READY=1 now that the server consumes

    def _on_lifecycle(self, uuid, event, detail):
        if self.manager is not None:
            self.manager.handle_lifecycle_event(uuid, event, detail)

    def _on_reconnect(self):
        LOG.info("libvirt connection is back; re-syncing power states")
        if self.manager is not None:
            self.manager.pool.submit(self.manager.sync_power_states)

    def _start_server(self, wait=10.0):
        """Start the RPC server in a thread of its own: with no broker node reachable
        oslo.messaging retries the connection forever inside ``start()``, and an agent
        stuck there could not even be stopped."""
        started = threading.Event()

        def run():
            self.server.start()
            started.set()
            LOG.info("RPC server consuming from %s.%s", self.conf.rpc_topic,
                     self.conf.host)

        threading.Thread(target=run, name="rpc-start", daemon=True).start()
        if not started.wait(wait):
            LOG.warning("no broker node reachable yet: the RPC server starts consuming "
                        "when one is back")

    def stop(self, grace=None):
        """Graceful stop: take no new messages, let running tasks finish -- within
        ``[DEFAULT] stop_timeout`` seconds; past that (no broker node reachable, a task
        stuck in a call) the process exits anyway, and says so."""
        grace = self.conf.stop_timeout if grace is None else grace
        self._stop_deadline = time.monotonic() + grace
        self.supervisor.stopping()
        done = threading.Event()

        def run():
            self._stop_parts()
            done.set()

        threading.Thread(target=run, name="stop", daemon=True).start()
        if not done.wait(grace):
            LOG.error("stop did not finish in %d s (broker unreachable or a task "
                      "stuck): exiting now; interrupted work is recovered at start-up",
                      grace)
            logging.shutdown()
            os._exit(1)

    def _migration_grace(self):
        """How long running live migrations may go on at stop: ``[migration]
        stop_grace``, but never so long that their abort and rollback would not fit
        in what is left of ``stop_timeout`` (the process exits at that point, and a
        migration cut off there is only sorted out at the next start)."""
        left = self._stop_deadline - time.monotonic()
        fits = max(0.0, left - live_migration.STOP_ROLLBACK_SECONDS - STOP_MARGIN_SECONDS)
        grace = min(float(self.conf.migration.stop_grace), fits)
        if grace < self.conf.migration.stop_grace:
            LOG.warning("stop: live migrations get %.0f s to finish, not stop_grace=%d s "
                        "(stop_timeout leaves no more room for an abort and rollback)",
                        grace, self.conf.migration.stop_grace)
        return grace

    def _stop_parts(self):
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server.wait()
        if self.manager is not None:
            self.manager.live.stop(grace=self._migration_grace())
            self.manager.pool.shutdown(wait=True, cancel_futures=False)
            self.manager.precache.shutdown()  # queued pre-caches: failed at restart
        if self.host is not None:
            self.host.stop()
        if getattr(self, "metrics", None) is not None:
            self.metrics.stop()
        LOG.info("computeagent stopped")

    def wait(self):
        self._stop.wait()
