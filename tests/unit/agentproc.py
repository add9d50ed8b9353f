"""Runs the real ``computeagent`` daemon as a separate process on fakes (oslo.messaging
``fake:/`` inside that process, libvirt ``test:///default``, a SQLite file): what its
start-up, signals and systemd protocol do, without the lab."""
import os
import subprocess
import sys
import time

AGENT = os.path.join(os.path.dirname(sys.executable), "computeagent")


def write_config(tmp_path, extra=""):
    conf = tmp_path / "computeagent.conf"
    conf.write_text(f"""[DEFAULT]
host = fakehost
transport_url = fake:/
instances_path = {tmp_path}/inst
state_path = {tmp_path}/state
log_file = {tmp_path}/agent.log
debug = false
image_cache_manager_interval = 0
sync_power_state_interval = 1
[libvirt]
connection_uri = test:///default
virt_type = qemu
{extra}
""")
    return conf


def start(argv, env=None, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.Popen(argv, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def wait_log(path, text, proc=None, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and text in open(path).read():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError("agent exited %s: %s" % (proc.returncode,
                                                          proc.stderr.read()))
        time.sleep(0.1)
    raise AssertionError("%r not in %s after %ss" % (text, path, timeout))


def stop(proc, timeout=60):
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def stop_after(proc, path, timeout=90):
    """Wait until ``path`` exists (the process wrote its probe), then until it exits."""
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err
