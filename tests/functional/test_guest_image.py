"""The lab's tiny real Linux guest: build it (cached) and boot it once under plain
qemu-system-x86_64 (TCG, no libvirt), then prove its check notices a broken disk.

The console-parsing tests at the top need nothing; the real-stack ones skip with the
reason when tools are missing, and fail instead under CI=true."""
import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from computeagent.lab import guest

TOOLS = ["qemu-system-x86_64", "qemu-img", "mke2fs", "debugfs", "dpkg", "dpkg-deb",
         "apt-get", "apt-cache"]


def _skip_or_fail(reason):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("real-stack test cannot run under CI=true: %s" % reason)
    pytest.skip(reason)


def _missing_tools():
    return [t for t in TOOLS if shutil.which(t) is None
            and not os.path.exists("/usr/sbin/" + t) and not os.path.exists("/sbin/" + t)]


@pytest.fixture(scope="module")
def artifacts():
    missing = _missing_tools()
    if missing:
        _skip_or_fail("missing tools: %s (run ./run-tests to install)" % " ".join(missing))
    cache = os.environ.get(guest.CACHE_DIR_ENV) or guest.DEFAULT_CACHE_DIR
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as exc:
        _skip_or_fail("cache dir %s is not usable: %s" % (cache, exc))
    if not os.access(cache, os.W_OK):
        _skip_or_fail("cache dir %s is not writable (needs root)" % cache)
    return guest.build_guest()


# ----------------------------------------------------------------- console parsing

CONSOLE = (
    "[    3.5] EXT4-fs (vda): mounted filesystem\r\n"
    "GUESTBOOT 3.84\r\n"
    "GUESTCHECK 1 OK\r\n"
    "GUESTCHECK 2 OK\r\n"
    "[   12.1] EXT4-fs error (device vda): ext4_find_extent:936: inode #301: "
    "comm sha256sum: pblk 0 bad header/extent: invalid magic\r\n"
    "GUESTCHECK 3 FAIL 12\r\n"
)


def test_parse_console():
    assert guest.parse_console(CONSOLE) == [(1, True, 0), (2, True, 0), (3, False, 12)]
    assert guest.parse_console(CONSOLE.encode()) == guest.parse_console(CONSOLE)
    assert guest.parse_boots(CONSOLE) == [3.84]
    assert any("invalid magic" in e for e in guest.parse_errors(CONSOLE))
    check = guest.parse_console(CONSOLE)[-1]
    assert (check.n, check.ok, check.bad) == (3, False, 12)


def test_wait_for_check_tails_a_file(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("GUESTBOOT 1.0\nGUESTCHECK 1 OK\n")
    # after_n: the log is read from its start
    assert guest.wait_for_check(str(log), after_n=0, timeout=1) == (1, True, 0)
    # without after_n only lines completed after the call began count
    with pytest.raises(TimeoutError):
        guest.wait_for_check(str(log), timeout=0.3, poll=0.05)
    with open(log, "a") as f:
        f.write("GUESTCHECK 2 FAIL")  # not a whole line yet
    with pytest.raises(TimeoutError):
        guest.wait_for_check(str(log), after_n=1, timeout=0.3, poll=0.05)
    with open(log, "a") as f:
        f.write(" 13\r\n")
    assert guest.wait_for_check(str(log), after_n=1, timeout=1) == (2, False, 13)


def test_wait_for_check_callable_source_and_opener(tmp_path):
    chunks = ["GUESTCHECK 7 OK\n"]
    calls = []

    def source():  # the console gains one line per read after the first
        calls.append(1)
        if len(calls) > 1:
            chunks.append("GUESTCHECK %d OK\n" % (7 + len(chunks)))
        return "".join(chunks)

    assert guest.wait_for_check(source, timeout=2, poll=0.01).n == 8
    log = tmp_path / "elsewhere.log"
    log.write_text("GUESTCHECK 4 OK\n")
    opened = []

    def opener(path, mode):
        opened.append(path)
        return open(log, mode)

    assert guest.wait_for_check("/not/here", after_n=3, opener=opener, timeout=1).n == 4
    assert opened and opened[0] == "/not/here"


def test_wait_for_check_stops_on_panic(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("")

    def source():
        return log.read_text() + "Kernel panic - not syncing: Attempted to kill init!\n"

    with pytest.raises(guest.GuestPanic):
        guest.wait_for_check(source, after_n=0, timeout=5)


@pytest.mark.parametrize("crash", [
    "[    6.302265] list_add corruption. prev->next should be next (ffff8a69), but was 0",
    "[    6.304557] BUG: unable to handle page fault for address: 0000000000000008",
    "[   71.104350] watchdog: BUG: soft lockup - CPU#0 stuck for 71s! [init:1]",
    "[    6.306259] ---[ end trace 0000000000000000 ]---",
])
def test_wait_for_check_stops_on_a_kernel_crash_with_its_report(tmp_path, crash):
    """An oops without a panic (what the guest printed after a lossy TCG migration in
    the suite) ends the wait at once, report included, instead of after the timeout."""
    log = tmp_path / "console.log"
    log.write_text("GUESTCHECK 1 OK\n")
    t0 = time.monotonic()
    with open(log, "a") as f:
        f.write(crash + "\n[    6.3] RIP: 0010:rcu_note_context_switch+0x4ee/0x650\n")
    with pytest.raises(guest.GuestPanic) as err:
        guest.wait_for_check(str(log), after_n=1, timeout=30)
    assert time.monotonic() - t0 < 10
    assert crash.split("] ", 1)[1] in str(err.value) and "RIP: 0010" in str(err.value)


def test_wait_for_check_on_a_silent_console_says_the_guest_is_silent(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("")
    with pytest.raises(guest.GuestPanic, match="no output at all"):
        guest.wait_for_check(str(log), after_n=0, timeout=0.5, poll=0.05)


def test_wait_for_check_ignores_ordinary_kernel_lines(tmp_path):
    log = tmp_path / "console.log"
    log.write_text("[    0.1] Bugs fixed: none\n[    2.0] EXT4-fs (vda): mounted\n"
                   "GUESTCHECK 1 OK\n")
    assert guest.wait_for_check(str(log), after_n=0, timeout=5).ok


# ----------------------------------------------------------------- the real guest

@pytest.mark.realstack
def test_build_is_cached(artifacts):
    t0 = time.monotonic()
    again = guest.build_guest()
    assert time.monotonic() - t0 < 1.0
    assert again == artifacts
    for path in (artifacts.kernel, artifacts.initrd, artifacts.base_raw):
        assert os.path.getsize(path) > 0
    assert artifacts.virtual_size == guest.DISK_SIZE == os.path.getsize(artifacts.base_raw)
    assert guest.load_artifacts(artifacts.directory, verify=True) == artifacts
    assert os.path.basename(artifacts.directory) == artifacts.recipe_hash
    assert "console=ttyS0" in artifacts.cmdline


def _qmp_hmp(sock_path, command, timeout=10):
    """One HMP command through QMP's human-monitor-command; returns its output."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(sock_path)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s, s.makefile("rwb") as f:
        def call(execute, **arguments):
            f.write(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "return" in reply or "error" in reply:
                    return reply
        json.loads(f.readline())  # greeting
        call("qmp_capabilities")
        reply = call("human-monitor-command", **{"command-line": command})
        assert "return" in reply, reply
        return reply["return"]


def _physical_offset(base_raw, path):
    """Byte offset of a file's first block in base.raw (the file is one extent)."""
    out = subprocess.run(["debugfs", "-R", "bmap %s 0" % path, base_raw], check=True,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True).stdout
    return int(out.split()[0]) * 1024  # guest.py builds the filesystem with 1 KiB blocks


@pytest.mark.realstack
def test_guest_boots_checks_ok_and_notices_a_broken_disk(artifacts, tmp_path):
    overlay = guest.create_overlay(artifacts, str(tmp_path / "overlay.qcow2"), 1 << 30)
    console = str(tmp_path / "console.log")
    qmp = str(tmp_path / "qmp.sock")
    argv = guest.qemu_argv(artifacts, overlay, console, qmp_socket=qmp)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        first = guest.wait_for_check(console, after_n=0, timeout=60)
        first_at = time.monotonic() - t0
        assert first.ok, open(console).read()
        check = first
        for _ in range(2):
            check = guest.wait_for_check(console, after_n=check.n, timeout=30)
            assert check.ok, open(console).read()

        # Zero one file's first 64 KiB in the overlay under the running guest: the
        # check drops the page cache, so the very next rounds see the damage.
        offset = _physical_offset(artifacts.base_raw, "/usr/share/guest/blob-00")
        out = _qmp_hmp(qmp, 'qemu-io disk0 "write -z %d 64k"' % offset)
        # (qemu-io's own report goes to QEMU's stdout; an error would come back here)
        assert not any(w in out.lower() for w in ("error", "not found", "invalid")), out
        n = check.n
        # the round running while we wrote may still pass; the one after cannot
        check = guest.wait_for_check(console, after_n=n + 1, timeout=30)
        assert (check.ok, check.bad) == (False, 1), open(console).read()
    finally:
        proc.kill()  # only the QEMU this test started, by its PID
        proc.wait()
        proc.stderr.close()
    text = open(console).read()
    assert len(guest.parse_boots(text)) == 1
    checks = guest.parse_console(text)
    assert [c.n for c in checks] == list(range(1, len(checks) + 1))
    assert checks[0].ok and checks[1].ok and checks[2].ok
    print("first GUESTCHECK %.1f s after qemu start" % first_at)
