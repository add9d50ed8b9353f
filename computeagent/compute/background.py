"""Background work of the flows, written once: a named thread whose failure is never
silent (the error hook records it), and agent-to-agent calls retried with backoff
until a deadline (tenacity)."""
import concurrent.futures
import logging
import threading
import time

import tenacity

from computeagent import exception

LOG = logging.getLogger(__name__)

# errors that a retry cannot mend: the peer looked and said no
NOT_RETRIED = (exception.MigrationError, exception.InvalidInput,
               exception.BackingChainInvalid, exception.InstanceInvalidState,
               exception.InstanceNotFound, exception.MigrationNotFound)


def start(name, fn, *args, on_error=None):
    """Run ``fn(*args)`` in a thread; an exception is logged and handed to
    ``on_error(exc)`` (itself guarded), never lost."""
    def run():
        try:
            fn(*args)
        except Exception as e:
            LOG.exception("%s failed", name)
            if on_error is not None:
                try:
                    on_error(e)
                except Exception:
                    LOG.exception("%s: error handler failed", name)
    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def call(name, fn):
    """``fn()`` in a named thread, for a flow that goes on meanwhile: a Future that
    holds its value or its error."""
    done = concurrent.futures.Future()

    def run():
        try:
            done.set_result(fn())
        except Exception as e:
            done.set_exception(e)
    threading.Thread(target=run, name=name, daemon=True).start()
    return done


def short(e):
    """The first line of an error, bounded (for records and notifications)."""
    return str(e).splitlines()[0][:500] if str(e) else e.__class__.__name__


def call_with_retry(fn, retry_for, what="peer call", max_wait=10.0):
    """``fn()``; when it fails with anything but a definite refusal, again with
    exponential backoff (0.5 s doubling, at most ``max_wait``) until ``retry_for``
    seconds have passed, then the last error is raised."""
    if retry_for <= 0:
        return fn()

    def log_retry(state):
        LOG.info("%s failed (%s); retry %d", what, short(state.outcome.exception()),
                 state.attempt_number)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_not_exception_type(NOT_RETRIED),
        wait=tenacity.wait_exponential(multiplier=0.5, max=max_wait),
        stop=tenacity.stop_after_delay(retry_for),
        before_sleep=log_retry, sleep=time.sleep, reraise=True)
    return retrying(fn)
