"""Idempotency keys for the casts that are not idempotent by nature.

RabbitMQ delivers at least once, and a scheduler that lost its connection mid-cast
(a node failover) re-sends.  Most casts are idempotent by what they do: spawn by
uuid (a second spawn of an existing uuid changes nothing), live migration and resize
by ``migration_id``, confirm/revert by compare-and-swap on the migration's status,
IP add/remove by set semantics, stop/start by target state, delete by uuid.
``reboot`` is not: a repeat reboots the guest again.  Its key is the request's
``request_id`` (the scheduler keeps it when it re-sends): a reboot of the same
instance with a request id already accepted in the last ``ttl`` seconds is a
repeat and changes nothing.  Broker redeliveries of the very same message are
dropped earlier by oslo.messaging (its per-listener ``_unique_id`` cache).

The keys live in memory: an agent restart forgets them (oslo.messaging acknowledges
before dispatch, so a message handled before a crash is not redelivered to it).
"""
import threading
import time


class RecentKeys:
    """Keys accepted in the last ``ttl`` seconds (at most ``size`` kept)."""

    def __init__(self, ttl=3600.0, size=10000):
        self.ttl, self.size = ttl, size
        self._keys = {}
        self._lock = threading.Lock()

    def seen(self, key):
        with self._lock:
            t = self._keys.get(key)
            return t is not None and time.monotonic() - t < self.ttl

    def remember(self, key):
        with self._lock:
            now = time.monotonic()
            self._keys[key] = now
            if len(self._keys) > self.size:
                for k, t in sorted(self._keys.items(), key=lambda kv: kv[1])[
                        :len(self._keys) - self.size]:
                    del self._keys[k]


REBOOTS = RecentKeys()


def once(keys, key, fn, *args):
    """Run ``fn(*args)`` unless ``key`` was accepted before; remember ``key`` once
    ``fn`` returned (a refused request may be re-sent and then run).  A key with a
    None part is never deduplicated.  Returns True if ``fn`` ran."""
    if None in key:
        fn(*args)
        return True
    if keys.seen(key):
        return False
    fn(*args)
    keys.remember(key)
    return True
