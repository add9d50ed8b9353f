"""Test-only crash and pause points, shared by the flows: at a point named in
``[debug] crash_at`` the agent kills itself with SIGKILL, so tests can prove recovery
from a crash at exactly that step; at one named in ``[debug] pause_at``
(``point=seconds``) it waits there, so a test can pull the broker (or a link) away at
exactly that step.  Never set in production."""
import logging
import os
import signal
import time

LOG = logging.getLogger(__name__)


def _pause_seconds(conf, name):
    for entry in conf.debug.pause_at:
        point, _, secs = entry.partition("=")
        if point == name:
            try:
                return max(0.0, min(600.0, float(secs)))
            except ValueError:
                return 0.0
    return 0.0


def crash_point(conf, name):
    pause = _pause_seconds(conf, name)
    if pause:
        LOG.error("PAUSE POINT %s: waiting %.0f s", name, pause)
        time.sleep(pause)
        LOG.error("PAUSE POINT %s: going on", name)
    if name in conf.debug.crash_at:
        LOG.error("CRASH POINT %s: killing myself with SIGKILL", name)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
