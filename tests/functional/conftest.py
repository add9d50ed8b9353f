"""Real-stack fixtures: one lab (private RabbitMQ, image server, two libvirtd
hypervisors in namespaces, two agents) per test session, and a real tiny Linux
guest as the image.

Without root or the Debian packages these tests skip with the reason; under
CI=true a skip is turned into a failure (CI must run them)."""
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid as uuidlib

import pytest

# Debian 12's QEMU (7.2) loses a few guest writes in a live migration of a TCG guest
# whose RAM is a multiple of 256 KiB (its fast dirty-bitmap sync leaves TCG's TLB
# stale; fixed upstream in 9.0 by 03bfc2188f; docs/tcg-migration.md). The lab's QEMU
# wrapper pads every guest's RAM by 8 KiB, which takes the slow, correct path. As a
# second line, a test that live-migrates gets one more run when, and only when, it
# failed on a guest crash (GuestPanic: the console shows a panic, oops, BUG or
# lockup; GuestSilent: it printed nothing at all, a hung guest); any other failure,
# or the same crash twice, fails it. A rerun shows in the summary.
TCG_LIVE_MIGRATION = pytest.mark.flaky(reruns=1, only_rerun=["GuestPanic", "GuestSilent"])

REQUIRED_BINARIES = ["libvirtd", "virsh", "qemu-system-x86_64", "qemu-img",
                     "rabbitmq-server", "rabbitmqctl", "ebtables", "ip", "nsenter",
                     "unshare", "gcc"]
AGENT_EXTRA_CONF = {
    "DEFAULT": {"sync_power_state_interval": "2", "image_cache_manager_interval": "0"},
    "libvirt": {"shutdown_timeout": "1"},
    "migration": {"resize_finish_timeout": "20"},
    "network": {"allowed_bridges": "br-lab"},
    "metrics": {"port": "9185"},   # on each host's loopback (its own namespace)
}


def realstack_missing():
    if os.geteuid() != 0:
        return "real-stack tests need root"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None
               and not os.path.exists("/usr/sbin/" + b)]
    if missing:
        return "missing binaries: %s (run ./run-tests to install)" % " ".join(missing)
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python is not installed"
    return None


def skip_or_fail(reason):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("real-stack test cannot run under CI=true: %s" % reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def guest_artifacts():
    reason = realstack_missing()
    if reason:
        skip_or_fail(reason)
    from computeagent.lab import guest
    return guest.build_guest()


@pytest.fixture(scope="session")
def lab(guest_artifacts):
    from computeagent.lab import lab as labmod
    extra = {k: dict(v) for k, v in AGENT_EXTRA_CONF.items()}
    extra["libvirt"].update(kernel_path=guest_artifacts.kernel,
                            initrd_path=guest_artifacts.initrd,
                            kernel_cmdline=guest_artifacts.cmdline)
    lab = labmod.Lab()
    # hostc: image pre-cache tests; COMPUTEAGENT_LAB_BROKER_NODES=3: the whole
    # session on a 3-node RabbitMQ cluster
    lab.up(hosts=3, agents=True, extra_conf=extra,
           broker_nodes=int(os.environ.get("COMPUTEAGENT_LAB_BROKER_NODES") or 1))
    try:
        yield lab
    finally:
        for path in _published:
            if os.path.exists(path):
                os.unlink(path)
        # age out the bases the tests left behind, with the agent's own cleaner
        manage = os.path.join(os.path.dirname(lab.state["agent_executable"]),
                              "computeagent-manage")
        for host in lab.host_names:
            lab.host_exec(host, [manage, "--config-file", lab.host(host)["agent_config"],
                                 "image-cache", "clean", "--min-age", "0"], check=False)
        if os.environ.get("COMPUTEAGENT_KEEP_LAB") != "1":
            lab.down()


_published = []


@pytest.fixture(scope="session")
def guest_image(lab, guest_artifacts):
    """The guest's base.raw published on the lab image server."""
    # named by content: a rebuilt guest never meets a stale copy of an older base
    return publish_image(lab, guest_artifacts.base_raw,
                         "guest-%s.raw" % guest_artifacts.base_sha256[:16], "raw")


def publish_image(lab, src, filename, disk_format, image_id=None):
    dst = os.path.join(lab.image_dir, filename)
    if not os.path.exists(dst):
        shutil.copyfile(src, dst)
        if not filename.startswith("guest-"):
            _published.append(dst)
    h = hashlib.sha256()
    with open(dst, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"id": image_id or "img-" + filename, "url": lab.image_url(filename),
            "disk_format": disk_format, "size": os.path.getsize(dst),
            "hash_algo": "sha256", "hash": h.hexdigest()}


@pytest.fixture(scope="session")
def transport(lab):
    from oslo_config import cfg
    from computeagent.rpc import api
    cfg.CONF([], project="computeagent", default_config_files=[])
    lab.configure_messaging(cfg.CONF)   # amqps, the lab CA
    return api.get_transport(cfg.CONF, url=lab.transport_url(from_root=True))


@pytest.fixture(scope="session")
def agent(transport):
    from computeagent.rpc import api
    return api.ComputeAgentAPI(transport, timeout=30)


@pytest.fixture
def ctxt():
    return {"request_id": "req-" + str(uuidlib.uuid4())}


def make_instance(image, name="vm", ips=("10.0.0.5",), root_gb=1, memory_mb=96,
                  vcpus=1, mac=None, **kw):
    u = str(uuidlib.uuid4())
    mac = mac or "52:54:00:%02x:%02x:%02x" % tuple(uuidlib.UUID(u).bytes[:3])
    inst = {"uuid": u, "name": name,
            "flavor": {"name": "lab.small", "vcpus": vcpus, "memory_mb": memory_mb,
                       "root_gb": root_gb},
            "image": dict(image),
            "networks": [{"id": "net1", "bridge": "br-lab", "mac": mac,
                          "fixed_ips": list(ips)}],
            "metadata": {"test": "yes"}}
    inst.update(kw)
    return inst


def wait_for(fn, timeout=60, interval=0.25, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except Exception as e:  # keep polling through transient errors
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError("timed out waiting for %s; last: %r" % (what, last))


def wait_state(agent, ctxt, host, uuid, state, timeout=90):
    def check():
        i = agent.get_instance(ctxt, host, uuid)
        if i["state"] == state and i["task_state"] is None:
            return i
        if i["state"] == "ERROR" and state != "ERROR":
            raise AssertionError("instance went to ERROR: %s" % i["fault"])
        return None
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            r = check()
        except AssertionError:
            raise
        except Exception as e:
            r, last = None, e
        if r:
            return r
        time.sleep(0.3)
    raise AssertionError("%s did not reach %s on %s (last error %r, last %r)" % (
        uuid, state, host, last, _safe_get(agent, ctxt, host, uuid)))


def gone(agent, ctxt, host, uuid):
    """True when ``host`` no longer knows the instance."""
    from computeagent import exception
    try:
        agent.get_instance(ctxt, host, uuid)
        return False
    except exception.InstanceNotFound:
        return True


def delete_everywhere(agent, ctxt, uuid, hosts=("hosta", "hostb")):
    """Best-effort delete of an instance on every host (test clean-up)."""
    for host in hosts:
        try:
            agent.delete(ctxt, host, uuid)
        except Exception:
            pass


def _safe_get(agent, ctxt, host, uuid):
    try:
        return agent.get_instance(ctxt, host, uuid)
    except Exception as e:
        return e


def virsh(lab, host, *args, check=True):
    r = subprocess.run(["virsh", "-c", lab.libvirt_uri(host)] + list(args),
                       capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError("virsh %s: %s" % (" ".join(args), r.stderr))
    return r.stdout


def normal_agent(lab, host):
    """The agent of ``host`` runs with the lab's config: started when it is down,
    its crash/pause points and cap cleared (SIGHUP) when it runs."""
    if lab.agent_pid(host) is None:
        lab.start_agent(host, extra_conf={})
    else:
        lab.reconfigure_agent(host, {})


def host_run(lab, host, argv, check=True):
    r = lab.host_exec(host, argv, check=False)
    out = r.stdout if hasattr(r, "stdout") else r
    if check and getattr(r, "returncode", 0) != 0:
        raise AssertionError("%s on %s failed: %s" % (argv, host, getattr(r, "stderr", "")))
    return out if isinstance(out, str) else out.decode()


def backing_chain(lab, host, path):
    return json.loads(host_run(lab, host, ["qemu-img", "info", "-U", "-f", "qcow2",
                                           "--backing-chain", "--output=json", path]))


def host_file_text(lab, host, path):
    return host_run(lab, host, ["cat", path], check=False)
