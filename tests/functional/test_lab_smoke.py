"""Smoke test of the lab itself (computeagent.lab) on the real system.

up; status; every host's libvirtd from the root namespace; each host's private view
(hostname, /etc/hosts, libvirt-qemu, /var/lib/computeagent); a live migration of a
BIOS-only guest from hosta to hostb over TCP (distinct host_uuid); the image server and
the broker from inside a host; libvirtd and broker restarts (the guest survives); down
leaves nothing behind; up again within the time budget.

Needs root, libvirtd, QEMU and RabbitMQ: skipped with the reason otherwise, failed
instead under CI=true.  If a healthy lab was already up (e.g. the session's `lab`
fixture), it is reused and, after this module's down/up cycle, brought back with the
same hosts, agents and agent options.
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from computeagent.lab import layout

pytestmark = pytest.mark.realstack

BINARIES = ["libvirtd", "virsh", "qemu-system-x86_64", "ip", "nsenter", "unshare",
            "taskset", "curl"]
UP_BUDGET_S = 20.0
DOWN_BUDGET_S = 15.0

BIOS_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'/>
  </devices>
</domain>
"""


def _missing():
    if os.geteuid() != 0:
        return "the lab needs root"
    missing = [b for b in BINARIES if not shutil.which(b)]
    for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/bin/epmd"):
        if not os.path.exists(path):
            missing.append(path)
    if missing:
        return "missing: %s (run tools/bootstrap.sh)" % " ".join(missing)
    if not shutil.which("gcc"):
        return "gcc is needed to build the lab's subreaper"
    try:
        import kombu  # noqa: F401
        import libvirt  # noqa: F401
    except ImportError as exc:
        return "python module missing: %s" % exc
    return None


def _skip_or_fail(reason):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("lab smoke test cannot run under CI=true: %s" % reason)
    pytest.skip(reason)


def _port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _amqp_url(transport_url):
    return "amqp://" + transport_url.split("://", 1)[1]


def _kombu_login(url, lab=None):
    import kombu
    ssl = lab.rabbit_ssl_options() if lab else {}
    conn = kombu.Connection(_amqp_url(url), connect_timeout=5,
                            ssl={"ca_certs": ssl["ssl_ca_file"], "cert_reqs": 2} if ssl else False)
    try:
        conn.connect()
        return conn.connected
    finally:
        conn.release()


def _previous_lab(lab):
    """What to restore afterwards if a healthy lab was already up."""
    if not lab.status()["healthy"]:
        return None
    st = lab.state
    return {"hosts": len(st["hosts"]),
            "agents": any(lab.agent_pid(n) for n in lab.host_names),
            "extra_conf": st.get("extra_conf") or None}


@pytest.fixture(scope="module")
def smoke_lab():
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    from computeagent.lab import Lab
    lab = Lab()
    previous = _previous_lab(lab)
    other_broker = _port_open("127.0.0.1", 5672)
    t0 = time.monotonic()
    lab.up(hosts=2, agents=False)
    lab.smoke_up_seconds = time.monotonic() - t0
    lab.smoke_other_broker = other_broker
    try:
        yield lab
    finally:
        if previous:
            lab.up(hosts=previous["hosts"], agents=previous["agents"],
                   extra_conf=previous["extra_conf"])
        elif os.environ.get("COMPUTEAGENT_KEEP_LAB") != "1":
            lab.down()


@pytest.fixture
def bios_domain(smoke_lab):
    """Define-less (transient) BIOS-only guests; destroyed wherever they ended up."""
    created = []

    def create(host):
        name = "labsmoke-" + uuid.uuid4().hex[:8]
        conn = smoke_lab.libvirt_connect(host)
        try:
            conn.createXML(BIOS_DOMAIN.format(name=name), 0)
        finally:
            conn.close()
        created.append(name)
        return name

    yield create
    import libvirt
    for host in smoke_lab.host_names:
        try:
            conn = smoke_lab.libvirt_connect(host)
        except libvirt.libvirtError:
            continue
        for name in created:
            try:
                conn.lookupByName(name).destroy()
            except libvirt.libvirtError:
                pass
        conn.close()


def test_up_status_and_layout(smoke_lab):
    lab = smoke_lab
    status = lab.status()
    assert status["healthy"], status
    assert lab.host_names == ["hosta", "hostb"]
    st = lab.load()
    assert st["state"] == "up"
    net = st["network"]
    assert net["bridge"] == layout.BRIDGE and net["gateway"] == net["prefix"] + ".1"
    assert lab.host_ip("hosta") == net["prefix"] + ".11"
    assert lab.host_ip("hostb") == net["prefix"] + ".12"
    uuids = {st["hosts"][n]["host_uuid"] for n in lab.host_names}
    assert len(uuids) == 2
    for name in lab.host_names:
        h = st["hosts"][name]
        assert h["netns"] == layout.NS_PREFIX + name
        assert os.path.exists("/run/netns/" + h["netns"])
        assert os.path.isdir(h["instances_dir"]) and os.path.isdir(h["state_dir"])
        assert os.path.isfile(h["agent_config"])
        assert h["init_ref"]["pid"] and status["hosts"][name]["libvirtd_pid"]
    assert lab.transport_url(from_root=True).endswith("@127.0.0.1:%d/" % layout.BROKER_PORT)
    assert lab.transport_url(from_root=False).endswith("@%s:%d/" % (net["gateway"], layout.BROKER_PORT))
    assert lab.image_url("x.raw") == "http://%s:%d/x.raw" % (net["gateway"], layout.IMAGE_PORT)
    assert lab.smoke_up_seconds < UP_BUDGET_S


def test_cli_status_json(smoke_lab):
    env = dict(os.environ, COMPUTEAGENT_LAB_DIR=smoke_lab.lab_dir)
    res = subprocess.run([sys.executable, "-m", "computeagent.cmd.lab", "status", "--json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["healthy"] and set(out["hosts"]) == {"hosta", "hostb"}
    assert out["lab"]["broker"]["transport_url"] == smoke_lab.transport_url()


def test_libvirtd_of_each_host_from_root_namespace(smoke_lab):
    lab = smoke_lab
    for name in lab.host_names:
        res = subprocess.run(["virsh", "-c", lab.libvirt_uri(name), "version"],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        conn = lab.libvirt_connect(name)
        try:
            assert conn.getHostname() == name
            assert "<uuid>%s</uuid>" % lab.host(name)["host_uuid"] in conn.getCapabilities()
        finally:
            conn.close()


def test_each_host_has_its_own_view(smoke_lab):
    lab = smoke_lab
    assert lab.host_exec("hosta", ["hostname"]).stdout.strip() == "hosta"
    hosts = lab.host_exec("hosta", ["cat", "/etc/hosts"]).stdout
    for name in lab.host_names:
        assert "%s\t%s" % (lab.host_ip(name), name) in hosts
    assert "calab-broker" in hosts and "calab-images" in hosts
    assert lab.host_exec("hostb", ["id", "-u", "libvirt-qemu"]).stdout.strip().isdigit()
    addrs = lab.host_exec("hostb", ["ip", "-br", "addr"]).stdout
    assert lab.host_ip("hostb") + "/24" in addrs and "br-lab" in addrs
    marker = "smoke-" + uuid.uuid4().hex
    lab.host_exec("hosta", ["touch", "/var/lib/computeagent/instances/" + marker])
    assert os.path.exists(os.path.join(lab.host(name="hosta")["instances_dir"], marker))
    assert lab.host_path("hosta", "/var/lib/computeagent/instances/" + marker) == \
        os.path.join(lab.host("hosta")["instances_dir"], marker)
    res = lab.host_exec("hostb", ["test", "-e", "/var/lib/computeagent/instances/" + marker],
                        check=False)
    assert res.returncode == 1
    os.unlink(os.path.join(lab.host("hosta")["instances_dir"], marker))
    # TLS between hosts (the lab's certificates), by name (hosta's /etc/hosts)
    lab.host_exec("hosta", ["virsh", "-c", lab.migration_uri("hostb"), "version"])


def test_live_migration_between_hosts(smoke_lab, bios_domain):
    import libvirt
    lab = smoke_lab
    name = bios_domain("hosta")
    t0 = time.monotonic()
    lab.host_exec("hosta", ["virsh", "migrate", "--live", "--p2p", "--tls", name,
                            lab.migration_uri("hostb")])
    elapsed = time.monotonic() - t0
    dst = lab.libvirt_connect("hostb")
    src = lab.libvirt_connect("hosta")
    try:
        assert dst.lookupByName(name).isActive()
        with pytest.raises(libvirt.libvirtError):
            src.lookupByName(name)
    finally:
        dst.close()
        src.close()
    assert elapsed < 30


def _pc_ram_bytes(lab, host, name):
    out = lab.host_exec(host, ["virsh", "qemu-monitor-command", "--hmp", name,
                               "info ramblock"]).stdout
    for line in out.splitlines():
        f = line.split()
        if f and f[0] == "pc.ram":     # Block Name, PSize (2 words), Offset, Used, Total
            return int(f[4], 16)
    raise AssertionError("no pc.ram block in:\n" + out)


def test_guest_ram_is_padded_off_the_fast_dirty_sync(smoke_lab, bios_domain):
    """The lab's QEMU (qemu-tcg-ram-pad.sh) gives the guest 8 KiB more RAM than libvirt
    asks for, so QEMU 7.2 tracks TCG's writes during a live migration page by page
    (docs/tcg-migration.md); both ends of a migration must agree on the size."""
    lab = smoke_lab
    name = bios_domain("hosta")
    size = _pc_ram_bytes(lab, "hosta", name)
    assert size == 64 * 1024 * 1024 + 8192
    assert size % (256 * 1024) != 0          # not the fast path's 64-page words
    lab.host_exec("hosta", ["virsh", "migrate", "--live", "--p2p", "--tls", name,
                            lab.migration_uri("hostb")])
    assert _pc_ram_bytes(lab, "hostb", name) == size


def test_image_server_from_a_host(smoke_lab):
    lab = smoke_lab
    fname = "smoke-%s.bin" % uuid.uuid4().hex[:8]
    path = os.path.join(lab.image_dir, fname)
    payload = os.urandom(300 * 1024)
    with open(path, "wb") as f:
        f.write(payload)
    try:
        lab.reset_image_stats()
        digest = lab.host_exec("hosta", ["sh", "-c", 'curl -sSf -m 10 "$1" | sha256sum',
                                         "sh", lab.image_url(fname)]).stdout.split()[0]
        assert digest == hashlib.sha256(payload).hexdigest()
        size = lab.host_exec("hostb", ["curl", "-sSf", "-m", "10", "-o", "/dev/null", "-w",
                                       "%{size_download}",
                                       "http://calab-images:%d/" % layout.IMAGE_PORT + fname]).stdout
        assert int(size) == len(payload)
        head = lab.host_exec("hostb", ["curl", "-sSfI", "-m", "10", lab.image_url(fname)]).stdout
        assert "Content-Length: %d" % len(payload) in head
        assert lab.image_get_count(fname) == 2
        assert lab.image_stats()["head"]["/" + fname] == 1
        lab.set_image_fault(fname, status=503)
        code = lab.host_exec("hosta", ["curl", "-s", "-m", "10", "-o", "/dev/null", "-w",
                                       "%{http_code}", lab.image_url(fname)]).stdout
        assert code == "503"
        lab.clear_image_faults()
        assert lab.image_get_count(fname) == 3
        lab.reset_image_stats()
        assert lab.image_get_count(fname) == 0
    finally:
        os.unlink(path)


def test_broker_from_a_host_and_from_root(smoke_lab):
    lab = smoke_lab
    assert _kombu_login(lab.transport_url(from_root=True), lab)
    # from a host: its agent's own user, amqps checked against the host's CA copy
    code = ("import kombu, sys\n"
            "c = kombu.Connection(sys.argv[1], connect_timeout=5,\n"
            "                     ssl={'ca_certs': sys.argv[2], 'cert_reqs': 2})\n"
            "c.connect(); print('connected' if c.connected else 'no'); c.release()\n")
    ca = lab.rabbit_ssl_options(from_root=False).get("ssl_ca_file", "")
    out = lab.host_exec("hosta", [sys.executable, "-c", code,
                                  _amqp_url(lab.agent_transport_url("hosta")), ca],
                        timeout=60).stdout
    assert out.strip() == "connected"


def test_restart_libvirtd_keeps_the_guest(smoke_lab, bios_domain):
    lab = smoke_lab
    name = bios_domain("hostb")
    qemu_pid = int(open(lab.host_path("hostb", "/run/libvirt/qemu/%s.pid" % name)).read())
    old = lab.libvirtd_pid("hostb")
    lab.restart_libvirtd("hostb")
    new = lab.libvirtd_pid("hostb")
    assert new and new != old
    assert os.path.exists("/proc/%d" % qemu_pid)
    conn = lab.libvirt_connect("hostb")
    try:
        assert conn.lookupByName(name).isActive()
    finally:
        conn.close()
    # a crashed libvirtd (SIGKILL) comes back the same way
    lab.restart_libvirtd("hostb", sig=9)
    conn = lab.libvirt_connect("hostb")
    try:
        assert conn.lookupByName(name).isActive()
    finally:
        conn.close()


def test_restart_broker(smoke_lab):
    lab = smoke_lab
    old = lab.status()["broker"]["pid"]
    lab.restart_broker()
    new = lab.status()["broker"]["pid"]
    assert new and new != old
    assert _kombu_login(lab.transport_url(from_root=True), lab)
    assert "computeagent" in lab.rabbitmqctl("list_users").stdout
    assert _port_open("127.0.0.1", 5672) == lab.smoke_other_broker


def test_zz_down_leaves_nothing_and_up_again(smoke_lab):
    lab = smoke_lab
    st = lab.load()
    refs = [st["broker"]["beam_ref"], st["broker"]["epmd_ref"], st["images"]["ref"]]
    for h in st["hosts"].values():
        refs += [h["init_ref"], h["libvirtd_ref"], h["agent_ref"]]
    pids = [r["pid"] for r in refs if r]
    t0 = time.monotonic()
    lab.down()
    down_s = time.monotonic() - t0
    assert down_s < DOWN_BUDGET_S
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert layout.NS_PREFIX not in netns
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert layout.NS_PREFIX not in links and layout.BRIDGE + ":" not in links
    from computeagent.lab import procutil
    alive = [p for p in pids if procutil.pid_alive(p)]
    assert not alive, alive
    assert not _port_open("127.0.0.1", layout.BROKER_PORT)
    assert _port_open("127.0.0.1", 5672) == lab.smoke_other_broker
    status = lab.status()
    assert status["state"] == "down" and not status["healthy"]

    t0 = time.monotonic()
    lab.up(hosts=2, agents=False)
    up_s = time.monotonic() - t0
    assert lab.status()["healthy"]
    assert up_s < UP_BUDGET_S
    # up again on a healthy lab is quick and changes nothing
    pid = lab.host("hosta")["init_ref"]["pid"]
    t0 = time.monotonic()
    lab.up(hosts=2, agents=False)
    assert time.monotonic() - t0 < 3
    assert lab.host("hosta")["init_ref"]["pid"] == pid
