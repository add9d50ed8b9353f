"""Native threads only: selects oslo.service's threading backend and keeps eventlet
out of the process.

oslo.service (pulled in by oslo.messaging's server module) still installs eventlet and
defaults to its eventlet backend; futurist, oslo.utils and oslo.concurrency import
eventlet *if it can be imported* ("try: import eventlet"), which loads it and prints an
EventletDeprecationWarning in every process, although nothing here monkey-patches or
uses green threads.  :func:`use_native_threads` must run before any oslo import (the
``computeagent.cmd`` package calls it, so every console script does): it refuses the
import of eventlet, so those libraries take their plain-threading paths, and selects
``BackendType.THREADING`` (the ``oslo.service[threading]`` extra).

Only the agent's own commands do this; a program that imports ``computeagent.rpc.api``
as a library keeps whatever it chose for itself.
"""
import importlib.abc
import sys

BLOCKED = "eventlet"


class _RefuseEventlet(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(
                "computeagent runs on native threads only: %s is not imported" % fullname,
                name=fullname)
        return None


def use_native_threads():
    """Refuse eventlet and select oslo.service's threading backend (idempotent).

    Raises RuntimeError if eventlet was already imported by someone else."""
    if BLOCKED in sys.modules:
        raise RuntimeError("eventlet was imported before computeagent could select "
                           "native threads")
    if not any(isinstance(f, _RefuseEventlet) for f in sys.meta_path):
        sys.meta_path.insert(0, _RefuseEventlet())
    from oslo_service import backend
    backend.init_backend(backend.BackendType.THREADING)
