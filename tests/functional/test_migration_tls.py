"""Issue 9: QEMU's migration streams (memory and the NBD disk copy) are encrypted.

The guest (its user_data, run by the lab guest every ~2 s) writes two markers it
computes itself -- sha256 of a seed, so the marker never crosses the broker or the
libvirt connection in clear -- one into RAM (devtmpfs) and one onto its disk (the
overlay, copied over NBD).  A capture of the TCP payloads between the two hosts
during the live migration (inside the destination's namespace, on its link) finds
both markers with TLS off and neither with TLS on.  With TLS required and a broken
certificate set on the destination, the migration fails closed: the guest stays on
the source and keeps passing its own check."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid as uuidlib

import pytest

from computeagent.lab import guest
from tests.functional.conftest import TCG_LIVE_MIGRATION, host_file_text, make_instance, wait_state
from tests.functional.test_live_migration import (
    A, B, INSTANCES, cleanup, console, migrate)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

INSECURE = {"migration": {"tls": "false"},
            "libvirt": {"allow_insecure_transport": "true"}}

MARKER_SCRIPT = """\
[ -f /dev/.issue9-marker ] && exit 0
set -- $(echo -n "{seed}-ram" | sha256sum); ram=$1
set -- $(echo -n "{seed}-disk" | sha256sum); disk=$1
i=0; : >/dev/.issue9-tmp
while [ $i -lt 512 ]; do echo "RAM $ram"; i=$((i+1)); done >>/dev/.issue9-tmp
i=0; : >/var/lib/guest/marker
while [ $i -lt 512 ]; do echo "DISK $disk"; i=$((i+1)); done >>/var/lib/guest/marker
sync
mv /dev/.issue9-tmp /dev/.issue9-marker
echo "GUESTMARKER written"
"""


def _markers(seed):
    ram = hashlib.sha256(("%s-ram" % seed).encode()).hexdigest()
    disk = hashlib.sha256(("%s-disk" % seed).encode()).hexdigest()
    return ("RAM " + ram).encode(), ("DISK " + disk).encode()


def _agents(lab, tls):
    """Both agents (and libvirt's migrate_tls_force) for TLS on or off."""
    for h in (A, B):
        lab.set_qemu_conf(h, "migrate_tls_force", 1 if tls else 0)
        lab.stop_agent(h)
        lab.start_agent(h, extra_conf={} if tls else INSECURE)


@pytest.fixture
def restore_agents(lab):
    yield
    _agents(lab, True)


def _spawn_marked(agent, ctxt, lab, image):
    seed = uuidlib.uuid4().hex
    inst = make_instance(image, name="tls-capture", config_drive=True,
                         user_data=base64.b64encode(
                             MARKER_SCRIPT.format(seed=seed).encode()).decode())
    agent.spawn(ctxt, A, inst)
    wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
    uuid = inst["uuid"]
    guest.wait_for_check(console(lab, A, uuid), timeout=90)
    deadline = time.monotonic() + 60
    while "GUESTMARKER written" not in host_file_text(
            lab, A, "%s/%s/console.log" % (INSTANCES, uuid)):
        assert time.monotonic() < deadline, "the guest did not write its markers"
        time.sleep(0.5)
    return uuid, _markers(seed)


def _capture_migration(lab, agent, ctxt, uuid, patterns):
    stop = os.path.join(lab.lab_dir, "capture-stop-%s" % uuid)
    hosts = "%s,%s" % (lab.host_ip(A), lab.host_ip(B))
    argv = [sys.executable, "-m", "computeagent.lab.sniff", "--grep", "eth0", stop,
            "120", hosts] + [p.hex() for p in patterns]
    # the lab's veth inside a host is its eth0? find the interface carrying its IP
    ifname = lab.host_exec(B, ["sh", "-c", "ip -o -4 addr show | awk '$4 ~ /^%s\\//"
                                           " {print $2}'" % lab.host_ip(B)]).stdout.strip()
    argv[4] = ifname
    proc = lab.host_popen(B, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    try:
        time.sleep(1.0)
        mig = migrate(agent, ctxt, A, uuid, B)
    finally:
        open(stop, "w").close()
        out, err = proc.communicate(timeout=60)
        os.unlink(stop)
    assert proc.returncode == 0, err
    return mig, json.loads(out)


def test_marker_in_clear_without_tls_never_with_tls(lab, agent, ctxt, guest_image,
                                                    restore_agents):
    results = {}
    for tls in (False, True):
        _agents(lab, tls)
        uuid, patterns = _spawn_marked(agent, ctxt, lab, guest_image)
        try:
            mig, cap = _capture_migration(lab, agent, ctxt, uuid, patterns)
            assert mig["status"] == "completed", mig
            wait_state(agent, ctxt, B, uuid, "ACTIVE")
            check = guest.wait_for_check(console(lab, B, uuid), timeout=60)
            assert check.ok, check
            results[tls] = (mig, cap)
        finally:
            cleanup(agent, ctxt, uuid)
    (m_off, c_off), (m_on, c_on) = results[False], results[True]
    for tls, (m, c) in sorted(results.items()):
        print("capture tls=%s: %s; migration %s ms downtime, %s memory bytes"
              % (tls, c, m.get("downtime_ms"), m.get("memory_processed")))
    # the capture saw the migration both times (memory and disk stream)
    assert c_off["bytes"] >= m_off["memory_processed"] // 2, c_off
    assert c_on["bytes"] >= m_on["memory_processed"] // 2, c_on
    assert c_off["found"] == [True, True], c_off    # RAM and disk marker in clear
    assert c_on["found"] == [False, False], c_on    # encrypted: neither


def test_required_tls_with_broken_certificates_fails_closed(lab, agent, ctxt,
                                                            guest_image):
    """The destination's QEMU certificate set is unusable (no server key): the
    migration fails, the guest runs on the source and passes its check."""
    qdir = os.path.join(lab.host_dir(B), "etc/pki/qemu")
    key = os.path.join(qdir, "server-key.pem")
    hidden = key + ".hidden"
    inst = make_instance(guest_image, name="tls-broken")
    agent.spawn(ctxt, A, inst)
    uuid = inst["uuid"]
    wait_state(agent, ctxt, A, uuid, "ACTIVE")
    try:
        guest.wait_for_check(console(lab, A, uuid), timeout=90)
        shutil.move(key, hidden)
        try:
            mig = migrate(agent, ctxt, A, uuid, B)
        finally:
            shutil.move(hidden, key)
        print("fail-closed migration: %s" % {k: mig.get(k) for k in ("status", "error")})
        assert mig["status"] == "failed", mig
        got = wait_state(agent, ctxt, A, uuid, "ACTIVE")
        assert got["host"] == A if "host" in got else True
        check = guest.wait_for_check(console(lab, A, uuid), timeout=60)
        assert check.ok, check
        dom = lab.host_exec(B, ["virsh", "list", "--all", "--name"]).stdout.split()
        assert "instance-" + uuid not in dom
    finally:
        cleanup(agent, ctxt, uuid)


def test_qemu_loads_the_hosts_dh_params_and_agents_do_not_warn(lab, agent):
    """Each host's QEMU TLS directory carries dh-params.pem, QEMU loads its server
    credentials from it (without the file it would generate DH parameters for every
    incoming migration: 0.3-1 s), and no agent warns that it is missing."""
    from tests.functional.conftest import host_run
    for host in (A, B):
        host_run(lab, host, ["qemu-img", "create", "-q", "-f", "raw", "/tmp/dh-probe.raw",
                             "1M"])
        # a server endpoint loads dh-params.pem; a bad file fails here
        host_run(lab, host, ["qemu-img", "info", "--object",
                             "tls-creds-x509,id=probe,endpoint=server,dir=/etc/pki/qemu,"
                             "verify-peer=on", "-f", "raw", "/tmp/dh-probe.raw"])
        host_run(lab, host, ["rm", "-f", "/tmp/dh-probe.raw"])
        assert "BEGIN DH PARAMETERS" in host_run(
            lab, host, ["cat", "/etc/pki/qemu/dh-params.pem"])
        with open(lab.agent_log(host), errors="replace") as f:
            assert "dh-params.pem is missing" not in f.read()
