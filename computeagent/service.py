"""Assembles the agent: database, libvirt host, manager, RPC server and the
periodic tasks (plain threads waiting on an Event; no eventlet, no greenthreads)."""
import logging
import os
import threading

import oslo_messaging as messaging

from computeagent.db import api as db_api
from computeagent.images import cache as image_cache
from computeagent import manager as manager_mod
from computeagent import notifications
from computeagent.rpc import api as rpc_api
from computeagent.rpc import server as rpc_server
from computeagent.virt import driver as vdriver
from computeagent.virt import host as vhost

LOG = logging.getLogger(__name__)


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

    def start(self):
        conf = self.conf
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
        peer_api = rpc_api.ComputeAgentAPI(self.transport, timeout=conf.rpc_call_timeout)
        self.manager = manager_mod.ComputeManager(conf, db, driver, cache, notifier,
                                                  peer_api)
        self.host.start()
        self.manager.init_host()
        self.server = rpc_server.get_server(self.transport, conf, self.manager)
        self.server.start()
        Periodic("power-sync", conf.sync_power_state_interval,
                 self.manager.sync_power_states, self._stop).start()
        Periodic("resize-auto-confirm", 5, self.manager.resize.auto_confirm,
                 self._stop).start()
        if conf.image_cache_manager_interval > 0:
            Periodic("image-cache", conf.image_cache_manager_interval,
                     self.manager.cleanup_image_cache, self._stop).start()
        LOG.info("computeagent %s serving topic %s", conf.host, conf.rpc_topic)

    def _on_lifecycle(self, uuid, event, detail):
        if self.manager is not None:
            self.manager.handle_lifecycle_event(uuid, event, detail)

    def _on_reconnect(self):
        LOG.info("libvirt connection is back; re-syncing power states")
        if self.manager is not None:
            self.manager.pool.submit(self.manager.sync_power_states)

    def stop(self, grace=60):
        """Graceful stop: take no new messages, let running tasks finish."""
        self._stop.set()
        if self.server is not None:
            self.server.stop()
            self.server.wait()
        if self.manager is not None:
            self.manager.pool.shutdown(wait=True, cancel_futures=False)
        if self.host is not None:
            self.host.stop()
        LOG.info("computeagent stopped")

    def wait(self):
        self._stop.wait()
