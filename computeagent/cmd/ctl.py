"""``computeagent-ctl``: an operator CLI that speaks the RPC API, like a scheduler.

Reads /etc/computeagent/computeagent.conf (``--config-file`` to use another); the
broker URL comes from that file's ``transport_url`` or ``$COMPUTEAGENT_TRANSPORT_URL``,
never from the command line.  Output: ``-f table|json|value|yaml`` after any command.
Exit codes: 0 done, 1 the operation failed, 2 usage, 3 unreachable.
"""
import sys
import time
from importlib import metadata

from cliff import app
from cliff import commandmanager

from computeagent.cli import base
from computeagent.cli import host
from computeagent.cli import image_cache
from computeagent.cli import instances
from computeagent.cli import migrations

COMMAND_MODULES = [instances, migrations, host, image_cache]


class CtlApp(app.App):
    def __init__(self):
        cm = commandmanager.CommandManager("computeagent.ctl")
        for mod in COMMAND_MODULES:
            for name, cls in mod.COMMANDS.items():
                cm.add_command(name, cls)
        try:
            version = metadata.version("computeagent")
        except metadata.PackageNotFoundError:
            version = "unknown"
        super().__init__(description=__doc__.strip().splitlines()[0], version=version,
                         command_manager=cm, deferred_help=True)
        self._connection = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument("--config-file", action="append", default=[],
                            metavar="PATH",
                            help="config file with transport_url and "
                                 "[oslo_messaging_rabbit] (repeatable; default %s)"
                                 % base.DEFAULT_CONFIG)
        parser.add_argument("--timeout", type=int, default=30, metavar="SECONDS",
                            help="timeout of each RPC call (default 30)")
        parser.add_argument("--retries", type=int, default=3, metavar="N",
                            help="broker connection retries before giving up "
                                 "(exit 3; default 3)")
        return parser

    def configure_logging(self):
        super().configure_logging()
        base.quiet_libraries(debug=self.options.debug)

    def connection(self):
        if self._connection is None:
            self._connection = base.Connection(self.options.config_file,
                                               self.options.timeout,
                                               self.options.retries)
        return self._connection

    def run(self, argv):
        if not argv:
            self.parser.print_help(self.stderr)
            return base.EXIT_USAGE
        return super().run(argv)


# -- helpers for programs that drive a ComputeAgentAPI themselves (the lab demo) ----
def _settled(inst):
    return inst is not None and instances.settled(inst)


def wait_for(agent, ctxt, host, uuid, pred, timeout=120, interval=0.3):
    """Poll get_instance until ``pred(instance or None)``; SystemExit on timeout."""
    from computeagent import exception
    deadline = time.monotonic() + timeout
    inst = None
    while time.monotonic() < deadline:
        try:
            inst = agent.get_instance(ctxt, host, uuid)
        except exception.InstanceNotFound:
            inst = None
        if pred(inst):
            return inst
        time.sleep(interval)
    raise SystemExit("timed out; last seen: %s" % base._brief(inst))


def watch_migration(agent, ctxt, host, mid, out=sys.stdout, timeout=3600,
                    interval=0.5, show=True):
    """Poll get_migration until it ends, with the CLI's progress line on ``out``."""
    from computeagent import exception
    deadline = time.monotonic() + timeout
    progress = base.Progress(out, enabled=show)
    mig = None
    while time.monotonic() < deadline:
        try:
            mig = agent.get_migration(ctxt, host, mid)
        except exception.MigrationNotFound:
            mig = None
        if mig is not None:
            progress.update(mig)
            if mig["status"] in ("completed", "failed", "cancelled"):
                break
        time.sleep(interval)
    progress.finish()
    return mig


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    try:
        return CtlApp().run(argv)
    except SystemExit as e:           # argparse: usage errors exit 2, --help 0
        return e.code if isinstance(e.code, int) else base.EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
