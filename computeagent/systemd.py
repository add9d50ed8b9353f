"""systemd service protocol (``Type=notify``, ``WatchdogSec=``), without libsystemd.

- ``READY=1`` once the RPC server consumes from its queue (``AgentService.start``
  returns after ``server.start()``, which declares the queue and its consumer).
- ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` while the agent is healthy: the libvirt
  connection is up and the RPC server's listener thread runs.  When either stays
  broken for ``WatchdogSec``, systemd restarts the agent (``Restart=on-failure``).
  A broker outage alone does not stop the feed: oslo.messaging reconnects by itself,
  and a restart would only interrupt running migrations.
- ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload, ``STOPPING=1`` at stop,
  ``STATUS=`` with what is wrong.

The messages are single datagrams to ``$NOTIFY_SOCKET`` (sd_notify(3)); nothing
happens when the agent does not run under systemd.
"""
import logging
import os
import socket
import threading

LOG = logging.getLogger(__name__)


def notify(*fields):
    """Send ``fields`` (e.g. ``"READY=1"``) to $NOTIFY_SOCKET; False if not sent."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(fields).encode())
        return True
    except OSError as e:
        LOG.warning("sd_notify to %s failed: %s", addr, e)
        return False


def watchdog_interval():
    """Seconds between pings (half of WatchdogSec), or None without a watchdog."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.1)
    except ValueError:
        return None


def rpc_server_healthy(server):
    """The oslo.messaging server was started and its listener thread runs."""
    if server is None or not getattr(server, "_started", False):
        return False
    listener = getattr(server, "listener", None)
    thread = getattr(listener, "_listen_thread", None)
    return thread is None or thread.is_alive()


def problems(svc):
    """What keeps the agent from being healthy (empty list: healthy)."""
    out = []
    if svc.host is None or not svc.host.connected:
        out.append("libvirt disconnected")
    if not rpc_server_healthy(svc.server):
        out.append("RPC server not running")
    return out


class Supervisor:
    """Tells systemd the agent is ready, feeds its watchdog while healthy."""

    def __init__(self, svc):
        self.svc = svc
        self._stop = threading.Event()
        self._thread = None
        self._last_problems = None

    def ready(self):
        notify("READY=1", "STATUS=serving as %s" % self.svc.conf.host)
        interval = watchdog_interval()
        if interval is not None and self._thread is None:
            self._thread = threading.Thread(target=self._feed, args=(interval,),
                                            name="systemd-watchdog", daemon=True)
            self._thread.start()

    def _feed(self, interval):
        while not self._stop.wait(interval):
            try:
                bad = problems(self.svc)
            except Exception as e:   # a failing check is unhealthy
                bad = ["health check failed: %s" % e]
            if not bad:
                notify("WATCHDOG=1")
            if bad != self._last_problems:
                if bad:
                    LOG.warning("unhealthy (watchdog not fed): %s", "; ".join(bad))
                notify("STATUS=%s" % ("; ".join(bad) if bad else
                                      "serving as %s" % self.svc.conf.host))
                self._last_problems = bad

    def reloading(self):
        notify("RELOADING=1")

    def reloaded(self):
        notify("READY=1")

    def stopping(self):
        self._stop.set()
        notify("STOPPING=1")
