"""``computeagent``: the daemon. Runs in the foreground (systemd ``Type=notify``:
READY=1 once it serves, WATCHDOG=1 while healthy, see computeagent.systemd).

SIGTERM/SIGINT: stop taking messages, let running tasks finish, exit 0.
SIGHUP: re-read the config files and apply the mutable options (``debug``, the log
levels); the agent keeps running."""
import logging as pylogging
import signal
import sys
import threading

from oslo_log import log as logging

from computeagent.conf import CONF

LOG = logging.getLogger(__name__)


def parse_args(argv):
    logging.register_options(CONF)
    CONF(argv, project="computeagent",
         default_config_files=_default_config_files(argv))
    logging.setup(CONF, "computeagent")


def _default_config_files(argv):
    if argv and any(a.startswith("--config-file") for a in argv):
        return None
    import os
    path = "/etc/computeagent/computeagent.conf"
    return [path] if os.path.exists(path) else []


def reload_config(svc):
    """SIGHUP: oslo.config re-reads the files and runs the mutate hooks (oslo.log
    re-applies ``debug``); options that are not mutable keep their value."""
    svc.supervisor.reloading()
    try:
        CONF.mutate_config_files()
    except Exception:
        LOG.exception("reload failed; the previous configuration stays")
    svc.supervisor.reloaded()
    LOG.debug("reloaded from %s", ", ".join(CONF.config_file or []))
    LOG.info("SIGHUP: configuration reloaded; root log level %s",
             pylogging.getLevelName(pylogging.getLogger().getEffectiveLevel()))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parse_args(argv)
    from computeagent import service
    svc = service.AgentService(CONF)
    stopping = threading.Event()
    wake = threading.Event()
    reload_requested = threading.Event()

    def on_signal(signum, _frame):
        stopping.set()
        wake.set()

    def on_hup(_signum, _frame):
        reload_requested.set()
        wake.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    svc.start()
    while not stopping.is_set():
        wake.wait(1)
        wake.clear()
        if reload_requested.is_set() and not stopping.is_set():
            reload_requested.clear()
            reload_config(svc)
    LOG.info("stopping (signal)")
    svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
