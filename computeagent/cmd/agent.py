"""``computeagent``: the daemon. Runs in the foreground (systemd Type=simple)."""
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parse_args(argv)
    from computeagent import service
    svc = service.AgentService(CONF)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        LOG.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    svc.start()
    while not stopping.wait(1):
        pass
    svc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
