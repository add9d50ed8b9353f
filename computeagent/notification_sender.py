"""Notifications off the worker threads: a bounded queue and one sender thread.

An oslo.messaging notifier sends synchronously and, by default, retries forever: while
the broker is unreachable, every flow that reports progress would stop at its next
notification, holding its worker thread (and its instance lock) for the whole outage.
Here ``info``/``error`` only enqueue; one daemon thread sends, each notification with
the finite ``[oslo_messaging_notifications] retry`` of the wrapped notifier.  When the
queue is full (a long outage) the oldest notifications are dropped, counted and
logged: work is never held back for the sake of a report.
"""
import collections
import logging
import threading

LOG = logging.getLogger(__name__)


class AsyncSender:
    """Wraps an ``oslo_messaging.Notifier``: same ``info``/``error`` calls, never
    blocking the caller."""

    def __init__(self, notifier, maxlen=1000):
        self._notifier = notifier
        self._queue = collections.deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="notifications",
                                        daemon=True)
        self._thread.start()

    def info(self, ctxt, event_type, payload):
        self._put("info", ctxt, event_type, payload)

    def error(self, ctxt, event_type, payload):
        self._put("error", ctxt, event_type, payload)

    def _put(self, level, ctxt, event_type, payload):
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                LOG.warning("notification queue full: dropped the oldest (%d so far)",
                            self.dropped)
            self._queue.append((level, ctxt, event_type, payload))
            self._cond.notify()

    def pending(self):
        with self._cond:
            return len(self._queue)

    def _run(self):
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                level, ctxt, event_type, payload = self._queue.popleft()
            try:
                getattr(self._notifier, level)(ctxt, event_type, payload)
            except Exception:
                # finite retry exhausted (broker unreachable): report and go on
                self.failed += 1
                LOG.exception("could not send notification %s", event_type)
