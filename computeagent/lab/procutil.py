"""Process helpers of the lab: everything is tracked and stopped by PID.

A PID recorded in lab.json is stored together with the process's start time (field 22 of
/proc/<pid>/stat, in clock ticks since boot), so that a PID reused by an unrelated process
after a crash or a reboot is never signalled.  Zombies count as dead.
"""
import errno
import os
import signal
import time


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rparen = data.rfind(")")
    return [data[:rparen + 1]] + data[rparen + 2:].split()


def proc_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot, or None if it does not exist."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    # fields[0] is "pid (comm)", fields[1] state, ... starttime is stat field 22,
    # i.e. index 20 here.
    try:
        return int(fields[20])
    except (IndexError, ValueError):
        return None


def proc_state(pid):
    fields = _stat_fields(pid)
    return fields[1] if fields else None


def proc_ref(pid):
    """A JSON-able reference to a running process: {"pid": ..., "start": ...}."""
    if not pid:
        return None
    return {"pid": int(pid), "start": proc_start_time(pid)}


def reap_if_child(pid):
    """Collect ``pid``'s exit status if it is our child and has exited."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def pid_alive(pid, start=None):
    """True if ``pid`` runs (not a zombie) and, when given, started at ``start``."""
    if not pid:
        return False
    pid = int(pid)
    reap_if_child(pid)
    fields = _stat_fields(pid)
    if not fields:
        return False
    if fields[1] in ("Z", "X", "x"):
        return False
    if start is not None:
        try:
            return int(fields[20]) == int(start)
        except (IndexError, ValueError):
            return False
    return True


def ref_alive(ref):
    if not ref:
        return False
    if isinstance(ref, int):
        return pid_alive(ref)
    return pid_alive(ref.get("pid"), ref.get("start"))


def ref_pid(ref):
    if not ref:
        return None
    if isinstance(ref, int):
        return ref
    return ref.get("pid")


def send_signal(ref, sig):
    """Signal a process if it is the recorded one; True if a signal was sent."""
    if not ref_alive(ref):
        return False
    try:
        os.kill(ref_pid(ref), sig)
        return True
    except ProcessLookupError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise


def wait_gone(refs, timeout):
    """Wait until every process of ``refs`` is gone; returns the ones still alive."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        alive = [r for r in refs if ref_alive(r)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_vanished(refs, timeout):
    """Wait until the processes of ``refs`` do not exist at all any more (reaped, not
    just zombies); returns the ones still there.  A zombie thread-group leader may
    still have threads exiting and holding resources (listening sockets...); only
    once its parent reaped it is it really gone."""
    deadline = time.monotonic() + timeout
    refs = [r for r in refs if r]
    while True:
        left = []
        for r in refs:
            pid = ref_pid(r)
            reap_if_child(pid)
            start = proc_start_time(pid)
            if start is not None and (not isinstance(r, dict) or r.get("start") is None
                                      or r.get("start") == start):
                left.append(r)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.005)


def terminate(refs, timeout=5.0, sig=signal.SIGTERM):
    """Send ``sig`` to every live process of ``refs``, then SIGKILL what is still
    there after ``timeout`` seconds; waits until all are gone (zombies count as gone).
    """
    refs = [r for r in refs if r]
    for r in refs:
        send_signal(r, sig)
    alive = wait_gone(refs, timeout)
    if alive and sig != signal.SIGKILL:
        for r in alive:
            send_signal(r, signal.SIGKILL)
        alive = wait_gone(alive, 5.0)
    return alive


def ns_inode(path):
    """Inode of a namespace file (/proc/<pid>/ns/<x> or /run/netns/<name>), or None."""
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_namespaces(mnt_ino=None, net_ino=None):
    """PIDs (not zombies) whose mount or network namespace has the given inode.

    Never includes this process.
    """
    result = []
    own = os.getpid()
    # A stale recorded inode may by now be the inode of our own namespaces: never
    # treat the root namespaces as a lab host's.
    if mnt_ino is not None and mnt_ino == ns_inode("/proc/self/ns/mnt"):
        mnt_ino = None
    if net_ino is not None and net_ino == ns_inode("/proc/self/ns/net"):
        net_ino = None
    if mnt_ino is None and net_ino is None:
        return result
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == own:
            continue
        match = False
        if mnt_ino is not None and ns_inode(f"/proc/{pid}/ns/mnt") == mnt_ino:
            match = True
        elif net_ino is not None and ns_inode(f"/proc/{pid}/ns/net") == net_ino:
            match = True
        if match and proc_state(pid) not in (None, "Z", "X", "x"):
            result.append(pid)
    return result


def read_pidfile(path):
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def ref_from_pidfile(path, must_contain=()):
    """Reference to the live process of a pid file, if its command line contains every
    string of ``must_contain`` (a stale pid file may name an unrelated process)."""
    pid = read_pidfile(path)
    if not pid or not pid_alive(pid):
        return None
    args = cmdline(pid)
    if not all(any(m in a for a in args) for m in must_contain):
        return None
    return proc_ref(pid)


def write_pidfile(path, pid):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)
