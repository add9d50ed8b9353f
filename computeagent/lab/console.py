"""The lab guest's console: parsing its ``GUESTCHECK``/``GUESTBOOT``/``GUESTERROR``/
``GUESTINFO`` lines and waiting for a fresh check (see computeagent.lab.guest for what
the guest prints and when)."""

import os
import re
import time
import typing

CHECK_RE = re.compile(r"GUESTCHECK (\d+) (?:(OK)|FAIL (-?\d+))")
BOOT_RE = re.compile(r"GUESTBOOT (\d+(?:\.\d+)?)")
ERROR_RE = re.compile(r"GUESTERROR (.*)")
INFO_RE = re.compile(r"GUESTINFO cpus=(\d+) mem_kb=(\d+) disk_bytes=(\d+)")


def parse_info(text):
    """The last ``GUESTINFO`` line: {"cpus", "mem_kb", "disk_bytes"} or None."""
    found = INFO_RE.findall(text or "")
    if not found:
        return None
    cpus, mem, disk = found[-1]
    return {"cpus": int(cpus), "mem_kb": int(mem), "disk_bytes": int(disk)}


class GuestPanic(RuntimeError):
    """The guest's kernel panicked or crashed (an oops, a BUG, list corruption, a
    lockup: seen on its console) while we waited for a check."""


class GuestSilent(GuestPanic):
    """The guest's console stayed empty for the whole wait: a hung guest (seen after
    lossy TCG live migrations: the destination's console never got a line)."""


# A kernel in trouble. After a live migration under TCG on QEMU < 9.0 this is most
# likely the guest writes QEMU lost (docs/faults.md); anywhere else it is a defect.
CRASH_RE = re.compile(r"Kernel panic|\bBUG: |\bOops: |general protection fault|"
                      r"list_(add|del) corruption|---\[ end trace|soft lockup|"
                      r"rcu: INFO: \w+ (self-)?detected stall")
# how long the rest of a crash report gets to reach the console
CRASH_TAIL_SECONDS = 2.0


class GuestCheck(typing.NamedTuple):
    n: int
    ok: bool
    bad: int


def parse_console(text):
    """Every ``GUESTCHECK`` line of a console log, in order, as :class:`GuestCheck`
    ``(n, ok, bad)`` tuples. Kernel messages and carriage returns around them are
    ignored."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out = []
    for m in CHECK_RE.finditer(text):
        ok = m.group(2) is not None
        out.append(GuestCheck(int(m.group(1)), ok, 0 if ok else int(m.group(3))))
    return out


def parse_boots(text):
    """Uptimes (seconds) of every ``GUESTBOOT`` line: one per boot of the root disk."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [float(m.group(1)) for m in BOOT_RE.finditer(text)]


def parse_errors(text):
    """``GUESTERROR`` reasons and kernel ``EXT4-fs error`` lines of a console log."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    out = [m.group(1).strip() for m in ERROR_RE.finditer(text)]
    out += [line.strip() for line in text.splitlines() if "EXT4-fs error" in line]
    return out


class _Tail:
    """Reads what a console log gained since the last call (whole lines only)."""

    def __init__(self, source, opener):
        self.source = source
        self.opener = opener
        self.offset = 0
        self.partial = b""

    def _read_from(self, offset):
        if callable(self.source):
            data = self.source()
            if isinstance(data, str):
                data = data.encode("utf-8", errors="replace")
            data = data or b""
            if len(data) < offset:  # restarted / truncated
                return data, 0
            return data[offset:], offset
        try:
            f = self.opener(self.source, "rb")
        except FileNotFoundError:
            return b"", 0
        with f:
            try:
                size = f.seek(0, os.SEEK_END)
                if size < offset:
                    offset = 0
                f.seek(offset)
                data = f.read()
            except (OSError, AttributeError, ValueError):
                data = f.read()
                if len(data) < offset:
                    return data, 0
                data = data[offset:]
        if isinstance(data, str):
            data = data.encode("utf-8", errors="replace")
        return data, offset

    def skip_existing(self):
        data, start = self._read_from(0)
        self.offset = start + len(data)
        self.partial = b""

    def lines(self):
        data, start = self._read_from(self.offset)
        if start != self.offset:  # the file shrank: start over
            self.partial = b""
        self.offset = start + len(data)
        buf = self.partial + data
        *complete, self.partial = buf.split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in complete]

    def tail_text(self, limit=2000):
        data, _ = self._read_from(0)
        return data[-limit:].decode("utf-8", errors="replace")


def wait_for_check(source, after_n=None, timeout=60, opener=open, poll=0.2,
                   raise_on_panic=True):
    """Wait for a fresh ``GUESTCHECK`` line in a console log and return it as a
    :class:`GuestCheck` (OK or FAIL; the caller judges).

    ``source`` is a path, read with ``opener(path, "rb")`` (pass an opener that reaches
    into another mount namespace, e.g. through ``/proc/<pid>/root``), or a callable
    returning the log's current text. Fresh means: the first check with ``n > after_n``
    anywhere in the log when ``after_n`` is given, otherwise the first check line
    completed after this call began. Only whole lines count; ``n`` restarts at 1 on
    every boot. Raises ``TimeoutError`` (with the end of the log) after ``timeout``
    seconds, and :class:`GuestPanic` (with the crash report) as soon as a fresh line
    shows a kernel panic or crash (``CRASH_RE``; unless ``raise_on_panic`` is false).
    """
    tail = _Tail(source, opener)
    if after_n is None:
        tail.skip_existing()
    deadline = time.monotonic() + timeout
    while True:
        for line in tail.lines():
            if raise_on_panic and CRASH_RE.search(line):
                time.sleep(CRASH_TAIL_SECONDS)
                raise GuestPanic("%s: %s\nlog ends with:\n%s"
                                 % (source, line.strip(), tail.tail_text()))
            for check in parse_console(line):
                if after_n is None or check.n > after_n:
                    return check
        if time.monotonic() >= deadline:
            if raise_on_panic and not tail.tail_text().strip():
                raise GuestSilent("%s: no output at all within %ss" % (source, timeout))
            raise TimeoutError("no fresh GUESTCHECK line in %s within %ss; log ends with:\n%s"
                               % (source, timeout, tail.tail_text()))
        time.sleep(poll)


# -- the network from the config drive (issue 13; see guest_init/guest-net.sh) ------
NET_RE = re.compile(r"GUESTNET (\d+) (\S+) (\S+) (\S+)")
NETERROR_RE = re.compile(r"GUESTNETERROR (.*)")
PING_RE = re.compile(r"GUESTPING (\d+) (\S+) (\S+) (OK|FAIL)")
PINGEND_RE = re.compile(r"GUESTPINGEND (\d+)")


class GuestNet(typing.NamedTuple):
    gen: int
    ifname: str
    mac: str
    addrs: tuple          # ("198.19.206.5/24", ...)


def parse_net(text):
    """Every ``GUESTNET`` line (one per configuration the guest applied), in order."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [GuestNet(int(m.group(1)), m.group(2), m.group(3),
                     tuple(a for a in m.group(4).split(",") if a != "-"))
            for m in NET_RE.finditer(text)]


def parse_pings(text):
    """Completed probe rounds: {round: {(label, address): True if a reply came}}, only
    rounds whose ``GUESTPINGEND`` line was printed. Rounds restart at 1 on every boot:
    pass only the console text since the boot of interest."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    done = {int(m.group(1)) for m in PINGEND_RE.finditer(text)}
    out = {}
    for m in PING_RE.finditer(text):
        r = int(m.group(1))
        if r in done:
            out.setdefault(r, {})[(m.group(2), m.group(3))] = m.group(4) == "OK"
    return out


# issue 11: the dirtier (/usr/libexec/dirtier, started from user_data)
DIRTY_RE = re.compile(r"GUESTDIRTY (\d+) (OK|FAIL) (\d+)")


def parse_dirty(text):
    """Every ``GUESTDIRTY`` line as ``(n, ok, value)``: value is the MiB dirtied in
    that second (OK) or the pages found with wrong content (FAIL)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [(int(n), st == "OK", int(v)) for n, st, v in DIRTY_RE.findall(text or "")]


def dirtier_user_data(rate_mib, working_set_mib):
    """A user_data script (run by the guest every ~2 s) starting the dirtier once."""
    return ("[ -f /tmp/dirtier.on ] || { touch /tmp/dirtier.on; "
            "/usr/libexec/dirtier %d %d & }\n" % (rate_mib, working_set_mib))
