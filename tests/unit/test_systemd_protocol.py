"""The real agent process under a fake systemd: a NOTIFY_SOCKET it reports to, a
watchdog period; SIGHUP reloads the log level and the agent lives on."""
import signal
import socket
import time

from tests.unit import agentproc


def recv_until(sock, wanted, timeout=90):
    deadline = time.monotonic() + timeout
    got = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            break
        got.append(msg)
        if wanted in msg.split("\n"):
            return got
    raise AssertionError("no %s from the agent; got %r" % (wanted, got))


def test_ready_watchdog_and_sighup_reload(tmp_path):
    conf = agentproc.write_config(tmp_path)
    addr = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(addr)
    log = tmp_path / "agent.log"
    proc = agentproc.start([agentproc.AGENT, "--config-file", str(conf)],
                           env={"NOTIFY_SOCKET": addr, "WATCHDOG_USEC": "1000000"})
    try:
        recv_until(sock, "READY=1")
        assert "serving topic" in log.read_text()     # ready only once it serves
        recv_until(sock, "WATCHDOG=1", timeout=30)
        recv_until(sock, "WATCHDOG=1", timeout=30)    # fed again, not once

        before = log.read_text()
        serving = before[before.index("serving topic"):]
        assert " DEBUG " not in serving                # debug = false so far
        conf.write_text(conf.read_text().replace("debug = false", "debug = true"))
        proc.send_signal(signal.SIGHUP)
        recv_until(sock, "RELOADING=1", timeout=30)
        recv_until(sock, "READY=1", timeout=30)
        agentproc.wait_log(log, "configuration reloaded; root log level DEBUG", proc)
        time.sleep(3)
        assert proc.poll() is None, "SIGHUP killed the agent"
        after = log.read_text()[len(before):]
        assert " DEBUG computeagent.cmd.agent " in after  # the new level applies
        recv_until(sock, "WATCHDOG=1", timeout=30)
    finally:
        rc, _out, err = agentproc.stop(proc)
        sock.close()
    assert rc == 0, err
