"""Per-instance serialisation.

Every operation that changes an instance or its files (spawn, power, fixed IPs,
delete, and each step of live migration and resize on either host: prepare, finish,
confirm, revert, rollback, auto-confirm, recovery) runs under that instance's lock.
The lock is re-entrant, because a same-host resize calls its own "peer" methods
directly in the same thread.  Locks are per process: the agent is the only writer of
its instances."""
import contextlib
import threading

_guard = threading.Lock()
_locks = {}        # uuid -> [RLock, users]


@contextlib.contextmanager
def instance_lock(uuid):
    with _guard:
        entry = _locks.setdefault(uuid, [threading.RLock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                _locks.pop(uuid, None)
