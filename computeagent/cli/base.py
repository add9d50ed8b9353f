"""What every ``computeagent-ctl`` command shares.

Exit codes: 0 done; 1 the operation failed (the agent refused it, the instance or
migration ended in ERROR/failed, or ``--wait`` ran out of time); 2 usage; 3 unreachable
(no broker, or no agent answers as that host).  Errors are one line on stderr.

Every RPC runs under a wall-clock bound (its timeout plus a margin): oslo.messaging
retries a lost broker forever inside a call (and does not enforce the call timeout
while it reconnects), so the bound is kept here.
"""
import json
import logging
import os
import sys
import threading
import time
import uuid as uuidlib

from cliff import columns
from cliff import command
from cliff import lister
from cliff import show

from computeagent import exception

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
ENV_TRANSPORT_URL = "COMPUTEAGENT_TRANSPORT_URL"
DEFAULT_CONFIG = "/etc/computeagent/computeagent.conf"


class Failed(Exception):
    """The operation failed: exit 1."""


class Unreachable(Exception):
    """No broker or no agent: exit 3."""


class JSONColumn(columns.FormattableColumn):
    """Nested values: compact JSON in tables, the value itself in ``-f json``."""

    def human_readable(self):
        return json.dumps(self._value, sort_keys=True, default=str)

    def machine_readable(self):
        return self._value


def columns_and_data(record, keys=None):
    keys = keys or sorted(record)
    data = []
    for k in keys:
        v = record.get(k)
        data.append(JSONColumn(v) if isinstance(v, (dict, list)) else v)
    return tuple(keys), tuple(data)


class _BrokerErrors(logging.Handler):
    """Remembers the last connection error oslo.messaging logs (to name it in the
    one-line error) while its log lines stay off the terminal."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.last = None
        self.failures = 0

    def emit(self, record):
        msg = record.getMessage()
        if record.levelno >= logging.ERROR and "onnect" in msg:
            self.last = msg.split(" (retrying")[0].splitlines()[0]
            self.failures += 1


BROKER_ERRORS = _BrokerErrors()


def quiet_libraries(debug=False):
    for name in ("oslo_messaging", "oslo.messaging", "amqp", "kombu"):
        lg = logging.getLogger(name)
        lg.addHandler(BROKER_ERRORS)
        if not debug:
            lg.propagate = False


class Connection:
    """The RPC client of one ``computeagent-ctl`` run, built from the config file
    (``transport_url``, ``[oslo_messaging_rabbit]``, ``rpc_topic``) or
    ``$COMPUTEAGENT_TRANSPORT_URL``."""

    def __init__(self, config_files, timeout, retries=3):
        from computeagent.conf import CONF
        from computeagent.rpc import api
        if not config_files and os.path.exists(DEFAULT_CONFIG):
            config_files = [DEFAULT_CONFIG]
        for f in config_files:
            if not os.access(f, os.R_OK):
                raise Failed("cannot read config file %s" % f)
        args = []
        for f in config_files:
            args += ["--config-file", f]
        CONF(args, project="computeagent", default_config_files=[])
        url = os.environ.get(ENV_TRANSPORT_URL) or None
        try:
            self.transport = api.get_transport(CONF, url=url)
        except Exception as e:
            raise Failed("bad transport URL: %s" % str(e).splitlines()[0])
        self.timeout, self.retries = timeout, retries
        self.api = api.ComputeAgentAPI(self.transport, timeout=timeout)

    def rpc(self, host, fn, *args, **kw):
        """Run one RPC (``fn`` a ComputeAgentAPI method): Unreachable after
        ``retries`` failed broker connection attempts, or timeout + 15 s in all."""
        box = {}

        def run():
            try:
                box["result"] = fn(*args, **kw)
            except BaseException as e:   # handed to the caller's thread
                box["error"] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        deadline = time.monotonic() + self.timeout + 15
        BROKER_ERRORS.failures = 0
        while t.is_alive() and time.monotonic() < deadline:
            t.join(0.2)
            if BROKER_ERRORS.failures > self.retries:
                raise Unreachable("broker: %s (%d attempts)" % (
                    BROKER_ERRORS.last, BROKER_ERRORS.failures))
        if t.is_alive():
            raise Unreachable("no answer within %d s: broker unreachable (%s)" % (
                self.timeout + 15, BROKER_ERRORS.last or "no connection"))
        if "error" in box:
            e = box["error"]
            import oslo_messaging as messaging
            if isinstance(e, messaging.MessagingTimeout):
                raise Unreachable("no agent answers as host %r within %d s "
                                  "(wrong --host, or its agent is not running)"
                                  % (host, self.timeout))
            if isinstance(e, (messaging.MessageDeliveryFailure,
                              messaging.exceptions.MessagingException)) and \
                    not isinstance(e, messaging.RemoteError):
                raise Unreachable("broker: %s" % str(e).splitlines()[0])
            raise e
        return box.get("result")


def new_context():
    return {"request_id": "req-" + str(uuidlib.uuid4())}


class _Base(command.Command):
    """Options and error handling shared by show-like and list-like commands."""

    needs_host = True
    log = logging.getLogger(__name__)

    def get_parser(self, prog_name):
        parser = super().get_parser(prog_name)
        if self.needs_host:
            parser.add_argument("--host", required=True, metavar="HOST",
                                help="the agent to talk to (its [DEFAULT] host name)")
        self.add_arguments(parser)
        return parser

    def add_arguments(self, parser):
        """Subclasses add their own options here."""

    @property
    def conn(self) -> "Connection":
        return self.app.connection()  # type: ignore[attr-defined]  # CtlApp

    def call(self, fn_name, *args, **kw):
        fn = getattr(self.conn.api, fn_name)
        return self.conn.rpc(self.host, fn, self.ctxt, self.host, *args, **kw)

    def run(self, parsed_args):
        self.exit_code = EXIT_OK
        self.host = getattr(parsed_args, "host", None)
        self.ctxt = new_context()
        try:
            rc = super().run(parsed_args)
        except Unreachable as e:
            self.app.stderr.write("error: unreachable: %s\n" % e)
            return EXIT_UNREACHABLE
        except (Failed, exception.ComputeAgentError) as e:
            self.app.stderr.write("error: %s\n" % str(e).splitlines()[0])
            return EXIT_FAILED
        return rc or self.exit_code

    def fail_after_output(self, message):
        """Print the record as usual, then exit 1 with ``message`` on stderr."""
        self.app.stderr.write("error: %s\n" % message)
        self.exit_code = EXIT_FAILED


class ShowCommand(_Base, show.ShowOne):
    """A command that prints one record (``-f table|json|value|yaml|shell``)."""

    def take_action(self, parsed_args):
        return columns_and_data(self.record(parsed_args))

    def record(self, parsed_args):
        raise NotImplementedError


class ListCommand(_Base, lister.Lister):
    """A command that prints rows (``-f table|json|value|yaml|csv``)."""

    COLUMNS: tuple[str, ...] = ()

    def take_action(self, parsed_args):
        rows = self.rows(parsed_args)
        return self.COLUMNS, [columns_and_data(r, self.COLUMNS)[1] for r in rows]

    def rows(self, parsed_args):
        raise NotImplementedError


class PlainCommand(_Base):
    """A command that prints nothing of its own."""

    def take_action(self, parsed_args):
        raise NotImplementedError


# -- waiting -----------------------------------------------------------------
def add_wait_arguments(parser, what):
    parser.add_argument("--wait", action="store_true",
                        help="wait until %s, then print the final record; exit 1 if "
                             "it failed" % what)
    parser.add_argument("--wait-timeout", type=float, default=600, metavar="SECONDS",
                        help="give up waiting after this long (exit 1; default 600)")
    parser.add_argument("--appear-timeout", type=float, default=30, metavar="SECONDS",
                        help="fail at once (exit 1) if no record of the request appears "
                             "within this long: the agent refused or dropped it "
                             "(default 30)")


class Waiter:
    """Polls ``get`` (None while there is no record) until ``done(record)``."""

    def __init__(self, cmd, parsed_args, get, done, what, interval=0.5, progress=None):
        self.cmd, self.get, self.done, self.what = cmd, get, done, what
        self.timeout = parsed_args.wait_timeout
        self.appear_timeout = parsed_args.appear_timeout
        self.interval, self.progress = interval, progress

    def wait(self):
        start = time.monotonic()
        seen, rec = False, None
        while True:
            rec = self.get()
            now = time.monotonic() - start
            if rec is not None:
                seen = True
                if self.progress:
                    self.progress.update(rec)
                if self.done(rec):
                    break
            elif not seen and now > self.appear_timeout:
                raise Failed("no record of %s after %.0f s: the agent refused or dropped "
                             "the request (see its log)" % (self.what, now))
            if now > self.timeout:
                if self.progress:
                    self.progress.finish()
                raise Failed("timed out after %.0f s waiting for %s; last: %s" % (
                    now, self.what, _brief(rec)))
            time.sleep(self.interval)
        if self.progress:
            self.progress.finish()
        return rec


def _brief(rec):
    if not rec:
        return None
    keys = ("status", "state", "task_state", "power_state", "progress", "error", "fault")
    return {k: rec.get(k) for k in keys if rec.get(k) is not None}


def _mib(n):
    return (n or 0) / (1 << 20)


class Progress:
    """Migration progress on stderr: percent, MiB done/total, rate and ETA.  Redrawn
    in place on a terminal; one line per second at most otherwise; nothing with
    ``-q``."""

    def __init__(self, stream, enabled=True, clock=time.monotonic):
        self.stream, self.enabled, self.clock = stream, enabled, clock
        self.tty = enabled and getattr(stream, "isatty", lambda: False)()
        self.samples = []
        self.last_line, self.last_time = None, 0.0
        self.drawn = False

    def line(self, rec):
        now = self.clock()
        done = rec.get("data_processed") or 0
        total = rec.get("data_total") or 0
        self.samples.append((now, done))
        self.samples = [s for s in self.samples if now - s[0] <= 5] or [(now, done)]
        t0, d0 = self.samples[0]
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        remaining = rec.get("data_remaining")
        if remaining is None:
            remaining = max(total - done, 0)
        eta = "ETA %ds" % (remaining / rate) if rate > 0 and remaining else "ETA -"
        if rec.get("status") in ("completed", "failed", "cancelled", "verify-resize",
                                 "confirmed", "reverted"):
            eta = "done"
        return "%-15s %3d%%  %.1f/%.1f MiB  %.1f MiB/s  %s" % (
            rec.get("status"), rec.get("progress") or 0, _mib(done), _mib(total),
            _mib(rate), eta)

    def update(self, rec):
        if not self.enabled:
            return
        line = self.line(rec)
        if self.tty:
            self.stream.write("\r" + line.ljust(70))
            self.drawn = True
        elif line != self.last_line and self.clock() - self.last_time >= 1:
            self.stream.write(line + "\n")
            self.last_time = self.clock()
        self.last_line = line
        self.stream.flush()

    def finish(self):
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def progress_for(cmd):
    return Progress(cmd.app.stderr, enabled=cmd.app.options.verbose_level > 0)


def stdin_is_tty():
    return sys.stdin.isatty()
