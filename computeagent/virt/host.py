"""The connection to this host's libvirtd: events, keepalive and reconnection.

libvirt's default event loop runs in a native thread; lifecycle events and the
close callback are delivered there and handed to the caller's callbacks, which
must be quick (the manager queues work). If libvirtd goes away, a reconnect
thread retries until it is back and then re-registers the event callbacks; the
agent process and the guests are not touched.
"""
import logging
import threading
import time

import libvirt

from computeagent import exception

LOG = logging.getLogger(__name__)

_event_loop_lock = threading.Lock()
_event_loop_started = False


def _libvirt_error_handler(_ctx, _err):
    # libvirt prints every error to stderr by default; errors reach us as
    # exceptions already.
    pass


def start_event_loop():
    """Register libvirt's default event implementation and run it in a thread.

    Must happen before any connection is opened (keepalive and events need it).
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(_libvirt_error_handler, None)
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class Host:
    def __init__(self, uri, lifecycle_cb=None, reconnect_cb=None, reconnect_interval=2):
        self.uri = uri
        self._lifecycle_cb = lifecycle_cb
        self._reconnect_cb = reconnect_cb
        self._interval = reconnect_interval
        self._conn = None
        self._lock = threading.RLock()
        self._disconnected = threading.Event()
        self._stopping = threading.Event()
        self._thread = None
        self.reconnects = 0

    # -- connection ------------------------------------------------------
    def start(self):
        start_event_loop()
        try:
            self._connect()
        except libvirt.libvirtError as e:
            LOG.warning("libvirt not reachable at start-up (%s); will retry", e)
            self._disconnected.set()
        self._thread = threading.Thread(target=self._reconnect_loop,
                                        name="libvirt-reconnect", daemon=True)
        self._thread.start()

    def stop(self):
        self._stopping.set()
        self._disconnected.set()
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def _connect(self):
        conn = libvirt.open(self.uri)
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass
        conn.registerCloseCallback(self._close_cb, None)
        if self._lifecycle_cb is not None:
            conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._event_cb, None)
        with self._lock:
            self._conn = conn
        self._disconnected.clear()
        LOG.info("connected to libvirt at %s", self.uri)
        return conn

    def _close_cb(self, conn, reason, opaque):
        LOG.warning("libvirt connection closed (reason %s); reconnecting", reason)
        with self._lock:
            if self._conn is conn:
                self._conn = None
        self._disconnected.set()

    def _event_cb(self, conn, dom, event, detail, opaque):
        try:
            self._lifecycle_cb(dom.UUIDString(), event, detail)
        except Exception:  # never let an exception into libvirt's loop
            LOG.exception("lifecycle event handler failed")

    def _reconnect_loop(self):
        while not self._stopping.is_set():
            self._disconnected.wait()
            if self._stopping.is_set():
                return
            try:
                self._connect()
            except libvirt.libvirtError as e:
                LOG.debug("reconnect to libvirt failed: %s", e)
                self._stopping.wait(self._interval)
                continue
            self.reconnects += 1
            if self._reconnect_cb is not None:
                try:
                    self._reconnect_cb()
                except Exception:
                    LOG.exception("reconnect handler failed")

    def get_connection(self):
        with self._lock:
            conn = self._conn
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            self._close_cb(conn, -1, None)
        raise exception.HypervisorUnavailable(reason="not connected to %s" % self.uri)

    def wait_connected(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.get_connection()
            except exception.HypervisorUnavailable:
                time.sleep(0.2)
        return self.get_connection()

    @property
    def connected(self):
        try:
            self.get_connection()
            return True
        except exception.HypervisorUnavailable:
            return False

    # -- queries ---------------------------------------------------------
    def lookup(self, uuid):
        """The domain with ``uuid`` or None."""
        conn = self.get_connection()
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def list_domains(self):
        return self.get_connection().listAllDomains(0)

    def host_stats(self):
        conn = self.get_connection()
        info = conn.getInfo()   # [model, memory MiB, cpus, mhz, nodes, sockets, cores, threads]
        try:
            free_bytes = conn.getFreeMemory()
        except libvirt.libvirtError:
            free_bytes = 0
        return {"memory_mb": info[1], "vcpus": info[2],
                "free_memory_mb": free_bytes // (1024 * 1024),
                "hostname": conn.getHostname(), "libvirt_version": conn.getLibVersion()}
