"""computeagent-ctl against the lab, as an operator runs it: a config file with the
broker URL, exit codes (0 done, 1 failed, 2 usage, 3 unreachable), one-line errors,
``-f json|value`` after the subcommand, --wait that fails fast without a record,
live-migrate --wait with progress (rate, ETA) on stderr."""
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from tests.functional.conftest import TCG_LIVE_MIGRATION, delete_everywhere, gone, make_instance, wait_for

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

CTL = os.path.join(os.path.dirname(sys.executable), "computeagent-ctl")


@pytest.fixture(scope="module")
def ctl_conf(lab, tmp_path_factory):
    path = tmp_path_factory.mktemp("ctl") / "computeagent.conf"
    ssl = "".join("%s = %s\n" % kv for kv in lab.rabbit_ssl_options(from_root=True).items())
    path.write_text("[DEFAULT]\ntransport_url = %s\n[oslo_messaging_rabbit]\n%s"
                    % (lab.transport_url(from_root=True), ssl))
    os.chmod(path, 0o600)
    return str(path)


def ctl(conf, *args, env=None, timeout=300):
    e = {k: v for k, v in os.environ.items() if k != "COMPUTEAGENT_TRANSPORT_URL"}
    e.update(env or {})
    argv = [CTL] + (["--config-file", conf] if conf else []) + list(args)
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e)
    r.elapsed = time.monotonic() - t0
    return r


def one_line_error(r):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_exit_codes_formats_and_errors(lab, ctl_conf):
    r = ctl(ctl_conf, "host-status", "--host", "hosta", "-f", "json")
    assert r.returncode == 0, r.stderr
    status = json.loads(r.stdout)
    assert status["host"] == "hosta" and status["libvirt_connected"] is True

    r = ctl(ctl_conf, "host-status", "--host", "hostb", "-f", "value", "-c", "host")
    assert (r.returncode, r.stdout.strip()) == (0, "hostb")

    r = ctl(ctl_conf, "list", "--host", "hosta", "-f", "json")
    assert r.returncode == 0 and isinstance(json.loads(r.stdout), list)

    # the operation failed: exit 1, one line
    r = ctl(ctl_conf, "show", "--host", "hosta", str(uuidlib.uuid4()))
    assert r.returncode == 1
    assert "could not be found" in one_line_error(r)

    # usage: exit 2
    assert ctl(ctl_conf, "show", "--host", "hosta").returncode == 2
    assert ctl(ctl_conf, "spawn", "--host", "hosta", "--vcpus", "x").returncode == 2
    assert ctl(ctl_conf, "no-such-command").returncode == 2

    # a host nobody serves: exit 3 after the call timeout, not a traceback
    r = ctl(ctl_conf, "--timeout", "3", "stop", "--host", "nosuchhost",
            str(uuidlib.uuid4()))
    assert r.returncode == 3
    assert "nosuchhost" in one_line_error(r)

    # no broker there: exit 3 after bounded retries
    r = ctl(None, "--retries", "1", "list", "--host", "hosta",
            env={"COMPUTEAGENT_TRANSPORT_URL": "rabbit://u:p@127.0.0.1:1/"})
    assert r.returncode == 3
    assert "broker" in one_line_error(r)


def test_spawn_wait_refused_fails_fast(lab, agent, ctxt, ctl_conf):
    # an image without its size is refused by the agent: exit 1 at once, not after
    # --wait-timeout
    u = str(uuidlib.uuid4())
    try:
        r = ctl(ctl_conf, "spawn", "--host", "hosta", "--uuid", u,
                "--image-url", "file:///etc/passwd", "--image-id", "x", "--network",
                "id=net1,bridge=br-lab,mac=52:54:00:00:0e:01,ips=10.0.0.9",
                "--wait", "--appear-timeout", "8", "--wait-timeout", "200", "-f", "json")
        assert r.returncode == 1
        assert "is in ERROR: Invalid input" in one_line_error(r)
        assert json.loads(r.stdout)["state"] == "ERROR"
        assert r.elapsed < 100
        # an unknown migration: exit 1 before anything is sent
        r = ctl(ctl_conf, "confirm", "--host", "hosta", u, "no-such-migration",
                "--wait", "--appear-timeout", "3")
        assert r.returncode == 1 and "not" in one_line_error(r)
    finally:
        delete_everywhere(agent, ctxt, u)


def test_spawn_live_migrate_wait_progress(lab, agent, ctxt, ctl_conf, guest_image,
                                          tmp_path):
    inst = make_instance(guest_image, name="ctl-vm", ips=("10.0.0.31",))
    payload = tmp_path / "inst.json"
    payload.write_text(json.dumps(inst))
    try:
        r = ctl(ctl_conf, "spawn", "--host", "hosta", "--from-json", str(payload),
                "--wait", "-f", "json")
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        assert (got["state"], got["power_state"]) == ("ACTIVE", "RUNNING")

        r = ctl(ctl_conf, "live-migrate", "--host", "hosta", inst["uuid"], "hostb",
                "--wait", "-f", "json")
        assert r.returncode == 0, r.stderr
        mig = json.loads(r.stdout)
        assert mig["status"] == "completed" and mig["dest"] == "hostb"
        assert "MiB/s" in r.stderr and ("ETA" in r.stderr or "done" in r.stderr)

        r = ctl(ctl_conf, "migration-list", "--host", "hostb", "-f", "value",
                "-c", "id", "-c", "status")
        assert "%s completed" % mig["id"] in r.stdout

        r = ctl(ctl_conf, "delete", "--host", "hostb", inst["uuid"], "--wait")
        assert r.returncode == 0, r.stderr
        assert gone(agent, ctxt, "hostb", inst["uuid"])
    finally:
        delete_everywhere(agent, ctxt, inst["uuid"])
        wait_for(lambda: gone(agent, ctxt, "hosta", inst["uuid"]) and
                 gone(agent, ctxt, "hostb", inst["uuid"]), timeout=60, what="gone")
