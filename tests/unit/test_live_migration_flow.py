"""The live-migration flow on a fake driver and a fake peer (fast): two "hosts" in one
process, each with its own real SQLite database, real instance directories and real
qemu-img overlays; libvirt replaced by a dict of where each guest runs.  Every failure
path of the source's flow at every step, the destination's handlers against their own
rollback and replays, and start-up recovery on both sides.  The real stack is in
tests/functional/test_live_migration*.py."""
import contextlib
import hashlib
import os
import threading
import time
import types
import uuid as uuidlib

import pytest

from computeagent import context
from computeagent import exception
from computeagent.compute import live_destination
from computeagent.compute import live_migration as lm
from computeagent.compute import peer as peer_rules
from computeagent.compute import states
from computeagent.db import api as db_api
from computeagent.images import qemu_img
from computeagent.virt.migrate import MigrationJobFailed

A, B = "hosta", "hostb"


class World:
    """What libvirt on every host runs: {host: {uuid: {"active", "job_active"}}}."""

    def __init__(self):
        self.hosts = {A: {}, B: {}}
        self.down = set()          # hosts whose libvirtd cannot be asked
        self.aborted = []


class FakeDriver:
    def __init__(self, world, host, instances):
        self.w, self.me, self.instances = world, host, instances
        self.fail = None           # "job", "job-after-switch", "crash"
        self.steps = 3

    def instance_dir(self, uuid):
        return os.path.join(self.instances, uuid)

    def disk_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "disk")

    def config_drive_path(self, uuid):
        return os.path.join(self.instance_dir(uuid), "disk.config")

    def make_instance_dir(self, uuid):
        os.makedirs(self.instance_dir(uuid), exist_ok=True)

    def remove_instance_dir(self, uuid):
        import shutil
        if os.path.isdir(self.instance_dir(uuid)):
            shutil.rmtree(self.instance_dir(uuid))

    def _facts(self, host, uuid):
        if host in self.w.down:
            raise exception.HypervisorUnavailable(reason="%s libvirtd down" % host)
        d = self.w.hosts[host].get(uuid)
        return None if d is None else dict(d, power_state=states.POWER_RUNNING
                                           if d["active"] else states.POWER_SHUTDOWN)

    def domain_facts(self, uuid):
        return self._facts(self.me, uuid)

    def peer_domain_facts(self, host, uuid):
        return self._facts(host, uuid)

    def lookup(self, uuid):
        return self.domain_facts(uuid)

    def destroy(self, uuid):
        return self.w.hosts[self.me].pop(uuid, None) is not None

    def power_state(self, uuid):
        f = self._facts(self.me, uuid)
        return states.POWER_SHUTDOWN if not f else f["power_state"]

    def power_on(self, uuid):
        self.w.hosts[self.me][uuid]["active"] = True

    def abort_migration(self, uuid):
        self.w.aborted.append(uuid)
        return True

    def completed_job_stats(self, uuid):
        return {"downtime": 42}

    def live_migrate(self, uuid, dest, on_progress, interval=0.5, inbound_addr=None):
        if self.w.hosts[self.me].get(uuid) is None:
            raise exception.InstanceInvalidState(uuid=uuid, state="no domain",
                                                 action="migrate", needed="a domain")
        self.w.hosts[dest][uuid] = {"active": False, "job_active": True}
        last = {}
        for i in range(self.steps):
            last = {"type": 2, "data_total": 100, "data_processed": 30 * i,
                    "data_remaining": 100 - 30 * i}
            why = on_progress(last)
            if why:
                self.w.hosts[dest].pop(uuid, None)
                raise MigrationJobFailed(why, aborted=True)
        if self.fail == "job":
            self.w.hosts[dest].pop(uuid, None)
            raise MigrationJobFailed("migrateToURI3: connection reset")
        self.w.hosts[dest][uuid] = {"active": True, "job_active": False}
        self.w.hosts[self.me].pop(uuid)
        if self.fail == "job-after-switch":
            raise MigrationJobFailed("migrateToURI3: connection lost at the end")
        return last, {"downtime": 7, "data_total": 100, "data_processed": 100}


class FakeCache:
    def __init__(self, base_dir):
        self.base_dir = base_dir
        os.makedirs(base_dir, exist_ok=True)

    def base_path(self, image_id):
        return os.path.join(self.base_dir, image_id)

    def ensure(self, image):
        p = self.base_path(image["id"])
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.write(b"\x01" * (1 << 20))

    def digest(self, image_id):
        p = self.base_path(image_id)
        if not os.path.exists(p):
            return None
        with open(p, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @contextlib.contextmanager
    def using(self, image):
        self.ensure(image)
        yield types.SimpleNamespace(digest=self.digest(image["id"]), disk_format="raw")


class Notifier:
    def __init__(self):
        self.sent = []

    def instance(self, ctx, inst, event, phase, **kw):
        self.sent.append(("%s.%s" % (event, phase), kw))


class FakePeer:
    """Agent-to-agent calls delivered straight to the other host's flows, through
    the same peer checks the RPC endpoint makes; ``fail[method]`` is a list of
    exceptions raised by the next calls (before delivery)."""

    def __init__(self, me):
        self.me = me
        self.flows = {}
        self.status = {"libvirt_connected": True, "free_ram_mb": 4096}
        self.fail = {}
        self.calls = []

    def _maybe_fail(self, method):
        self.calls.append(method)
        queue = self.fail.get(method)
        if queue:
            raise queue.pop(0)

    def get_host_status(self, ctx, host, timeout=None):
        self._maybe_fail("get_host_status")
        return dict(self.status)

    def get_migration(self, ctx, host, mid, timeout=None):
        self._maybe_fail("get_migration")
        return self.flows[host].get_migration(None, mid)

    def _peer(self, host, method, uuid, mid, payload=None):
        f = self.flows[host]
        peer_rules.check(f.db, host, method, {"host": self.me, "role": "source"}, uuid,
                         mid, payload)
        return f

    def _same_path(self, host, disk_info):
        """Real hosts share one instances path; the fake ones cannot."""
        return translate(disk_info, self.flows[self.me].m, self.flows[host].m)

    def pre_live_migration(self, ctx, host, instance, migration, disk_info,
                           timeout=None):
        self._maybe_fail("pre_live_migration")
        disk_info = self._same_path(host, disk_info)
        f = self._peer(host, "pre_live_migration", instance["uuid"], migration["id"],
                       migration)
        return f.pre_live_migration(types.SimpleNamespace(request_id="req-1"), instance,
                                    migration, disk_info)

    def post_live_migration_at_destination(self, ctx, host, uuid, mid, disk_info,
                                           timeout=None):
        self._maybe_fail("post_live_migration_at_destination")
        disk_info = self._same_path(host, disk_info)
        f = self._peer(host, "post_live_migration_at_destination", uuid, mid)
        return f.post_live_migration_at_destination(None, uuid, mid, disk_info)

    def rollback_live_migration_at_destination(self, ctx, host, uuid, mid,
                                               timeout=None):
        self._maybe_fail("rollback_live_migration_at_destination")
        f = self._peer(host, "rollback_live_migration_at_destination", uuid, mid)
        return f.rollback_live_migration_at_destination(None, uuid, mid)


def translate(disk_info, src, dst):
    d = dict(disk_info)
    if d.get("path"):
        d["path"] = d["path"].replace(src.driver.instances, dst.driver.instances)
    return d


def make_conf(host, crash_at=()):
    ns = types.SimpleNamespace
    return ns(host=host, rpc_call_timeout=5,
              migration=ns(max_concurrent_live_migrations=1,
                           pre_live_migration_timeout=30, completion_timeout_per_gib=0,
                           bandwidth_mib=0, tls=False, progress_interval=0,
                           inbound_addr=None,
                           peer_retry_timeout=3, stop_grace=5),
              debug=ns(crash_at=list(crash_at), pause_at=[], fault_injection=[]),
              network=ns(allowed_bridges=["br-lab"]))


class Manager:
    def __init__(self, tmp, world, host, peer):
        self.host = host
        self.conf = make_conf(host)
        self.db = db_api.Database("sqlite:///%s" % (tmp / ("%s.sqlite" % host)))
        self.db.sync()
        self.driver = FakeDriver(world, host, str(tmp / host / "instances"))
        os.makedirs(self.driver.instances, exist_ok=True)
        self.image_cache = FakeCache(str(tmp / "shared-base"))
        self.notifier = Notifier()
        # no config drive on these fake hosts: its travel has its own tests
        self.configdrive = types.SimpleNamespace(at_destination=lambda *a, **k: None)
        self.live = lm.LiveMigrationFlows(self, peer)
        # each fake host its own locks, as each real agent is its own process
        mine = {}
        guard = threading.Lock()

        def lock(uuid):
            with guard:
                return mine.setdefault(uuid, threading.RLock())
        self.live._lock = lock

    def _get_own(self, uuid):
        inst = self.db.instance_get(uuid)
        if inst["host"] != self.host:
            raise exception.InstanceNotFound(uuid=uuid)
        return inst


IMAGE = {"id": "img-base", "url": "http://x/img", "disk_format": "raw", "size": 1 << 20,
         "hash_algo": "sha256", "hash": "0" * 64}


@pytest.fixture
def pair(tmp_path):
    world = World()
    pa, pb = FakePeer(A), FakePeer(B)
    a = Manager(tmp_path, world, A, pa)
    b = Manager(tmp_path, world, B, pb)
    pa.flows = pb.flows = {A: a.live, B: b.live}
    return types.SimpleNamespace(world=world, a=a, b=b, pa=pa, pb=pb, tmp=tmp_path)


def spawn(p, host_mgr=None):
    """An ACTIVE instance on A with a real qcow2 overlay on the shared base."""
    m = host_mgr or p.a
    uuid = str(uuidlib.uuid4())
    m.image_cache.ensure(IMAGE)
    m.driver.make_instance_dir(uuid)
    qemu_img.create_overlay(m.driver.disk_path(uuid), m.image_cache.base_path(IMAGE["id"]),
                            "raw", 1 << 20)
    m.db.instance_create({
        "uuid": uuid, "name": "vm", "host": m.host, "state": states.ACTIVE,
        "task_state": None, "power_state": states.POWER_RUNNING,
        "flavor": {"name": "f", "vcpus": 1, "memory_mb": 64, "root_gb": 1},
        "image": IMAGE,
        "networks": [{"id": "n1", "bridge": "br-lab", "mac": "52:54:00:00:00:09",
                      "fixed_ips": ["10.0.0.2"]}],
        "meta": {}, "disk_path": m.driver.disk_path(uuid)})
    p.world.hosts[m.host][uuid] = {"active": True, "job_active": False}
    return uuid


def migrate(p, uuid, mid=None, wait=True):
    mid = mid or "mig-" + uuidlib.uuid4().hex[:8]
    p.a.live.live_migrate(context.new_context(), uuid, B, mid)
    if wait:
        wait_terminal(p.a, mid)
    return mid


def wait_terminal(m, mid, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mig = m.db.migration_get(mid)
        if mig["status"] in states.MIG_TERMINAL and mid not in m.live._threads \
                and mid not in m.live._recovering:
            return mig
        time.sleep(0.02)
    raise AssertionError("migration %s not terminal: %s" % (mid, m.db.migration_get(mid)))


def runs_on(p, uuid):
    return [h for h, doms in p.world.hosts.items()
            if doms.get(uuid, {}).get("active")]


def assert_stayed_on_source(p, uuid, mid, status=states.MIG_FAILED):
    mig = p.a.db.migration_get(mid)
    assert mig["status"] == status, mig
    assert runs_on(p, uuid) == [A]
    inst = p.a.db.instance_get(uuid)
    assert (inst["state"], inst["task_state"]) == (states.ACTIVE, None)
    assert os.path.exists(p.a.driver.disk_path(uuid))
    with pytest.raises(exception.InstanceNotFound):
        p.b.db.instance_get(uuid)
    try:
        assert p.b.db.migration_get(mid)["status"] in states.MIG_TERMINAL
    except exception.MigrationNotFound:
        pass


def assert_completed(p, uuid, mid):
    mig = p.a.db.migration_get(mid)
    assert mig["status"] == states.MIG_COMPLETED, mig
    assert runs_on(p, uuid) == [B]
    with pytest.raises(exception.InstanceNotFound):
        p.a.db.instance_get(uuid)
    assert p.b.db.instance_get(uuid)["state"] == states.ACTIVE
    assert p.b.db.migration_get(mid)["status"] == states.MIG_COMPLETED
    assert os.path.exists(p.b.driver.disk_path(uuid))


# ------------------------------------------------------------------ happy path
def test_completes_and_can_migrate_back(pair):
    p = pair
    uuid = spawn(p)
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)
    # the source's own completed statistics win over the destination's (5d1cb18)
    assert p.a.db.migration_get(mid)["downtime_ms"] == 7


# -------------------------------------------------- source failure at every step
@pytest.mark.parametrize("method,exc", [
    ("get_host_status", exception.MigrationError(reason="timeout")),
    ("pre_live_migration", exception.MigrationError(reason="no room")),
    ("pre_live_migration", TimeoutError("MessagingTimeout")),
])
def test_peer_call_failures_roll_back(pair, method, exc):
    p = pair
    uuid = spawn(p)
    p.pa.fail[method] = [exc]
    mid = migrate(p, uuid)
    assert_stayed_on_source(p, uuid, mid)
    assert ("rollback_live_migration_at_destination" in p.pa.calls) == \
        (method == "pre_live_migration")


@pytest.mark.parametrize("status", [{"libvirt_connected": False, "free_ram_mb": 4096},
                                    {"libvirt_connected": True, "free_ram_mb": 1}])
def test_destination_unfit_refused(pair, status):
    p = pair
    uuid = spawn(p)
    p.pa.status = status
    mid = migrate(p, uuid)
    assert_stayed_on_source(p, uuid, mid)


def test_migration_job_fails_rolls_back_destination(pair):
    p = pair
    uuid = spawn(p)
    p.a.driver.fail = "job"
    mid = migrate(p, uuid)
    assert_stayed_on_source(p, uuid, mid)
    assert not os.path.exists(p.b.driver.instance_dir(uuid))


def test_job_error_after_switch_over_finishes_instead(pair):
    p = pair
    uuid = spawn(p)
    p.a.driver.fail = "job-after-switch"
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)


def test_abort_during_copy_cancels(pair):
    p = pair
    uuid = spawn(p)
    p.a.driver.steps = 10 ** 6
    mid = migrate(p, uuid, wait=False)
    deadline = time.monotonic() + 10
    while p.a.db.migration_get(mid)["status"] != states.MIG_RUNNING and \
            time.monotonic() < deadline:
        time.sleep(0.02)
    p.a.live.abort_migration(None, mid)
    wait_terminal(p.a, mid)
    assert_stayed_on_source(p, uuid, mid, status=states.MIG_CANCELLED)


def test_abort_while_queued(pair):
    p = pair
    uuid = spawn(p)
    p.a.live._slots.acquire()          # the only slot is taken
    mid = migrate(p, uuid, wait=False)
    p.a.live.abort_migration(None, mid)
    wait_terminal(p.a, mid)
    p.a.live._slots.release()
    assert_stayed_on_source(p, uuid, mid, status=states.MIG_CANCELLED)
    assert "pre_live_migration" not in p.pa.calls


def test_internal_error_is_one_failure_path(pair, monkeypatch):
    p = pair
    uuid = spawn(p)
    monkeypatch.setattr(p.a.live, "disk_info", lambda inst: 1 / 0)
    mid = migrate(p, uuid)
    assert_stayed_on_source(p, uuid, mid)
    assert "internal error" in p.a.db.migration_get(mid)["error"]


def test_post_retried_across_a_broker_restart(pair):
    p = pair
    uuid = spawn(p)
    p.pa.fail["post_live_migration_at_destination"] = [
        TimeoutError("MessagingTimeout"), ConnectionError("broker restarting")]
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)


def test_post_executed_but_reply_lost_is_recognised(pair):
    p = pair
    uuid = spawn(p)
    real = p.pa.post_live_migration_at_destination
    state = {"n": 0}

    def post_then_lose_reply(*a, **kw):
        state["n"] += 1
        res = real(*a, **kw)
        if state["n"] == 1:
            raise TimeoutError("reply lost")
        return res
    p.pa.post_live_migration_at_destination = post_then_lose_reply
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)


def test_post_never_reaches_destination_keeps_source_files(pair):
    p = pair
    uuid = spawn(p)
    p.pa.fail["post_live_migration_at_destination"] = [TimeoutError("down")] * 50
    mid = migrate(p, uuid, wait=False)
    mig = wait_terminal(p.a, mid, timeout=30)
    assert mig["status"] == states.MIG_FAILED and mig["step"] == "source-files-kept"
    assert os.path.exists(p.a.driver.disk_path(uuid))     # never deleted unverified
    assert p.a.db.instance_get(uuid)["state"] == states.ERROR
    assert runs_on(p, uuid) == [B]


def test_task_state_cas_before_record(pair):
    p = pair
    uuid = spawn(p)
    p.a.db.instance_update(uuid, task_state=states.POWERING_OFF)
    with pytest.raises(exception.InstanceInvalidState):
        p.a.live.live_migrate(context.new_context(), uuid, B, "mig-lost-race")
    with pytest.raises(exception.MigrationNotFound):
        p.a.db.migration_get("mig-lost-race")


# -------------------------------------------------------- destination handlers
def _prep_args(p, uuid, mid, deadline=None):
    inst = p.a.db.instance_get(uuid)
    view = {k: inst[k] for k in ("uuid", "name", "flavor", "image", "networks")}
    view["metadata"] = {}
    mview = {"id": mid, "source": A, "dest": B, "instance_uuid": uuid,
             "pre_deadline": deadline or time.time() + 30}
    return view, mview, translate(p.a.live.disk_info(inst), p.a, p.b)


def test_rollback_before_prepare_leaves_tombstone_late_prepare_refused(pair):
    p = pair
    uuid = spawn(p)
    mid = "mig-tomb"
    p.pa.rollback_live_migration_at_destination(None, B, uuid, mid)
    assert p.b.db.migration_get(mid)["status"] == states.MIG_FAILED
    view, mview, dinfo = _prep_args(p, uuid, mid)
    with pytest.raises(exception.MigrationError):
        p.pa.pre_live_migration(None, B, view, mview, dinfo)
    assert not os.path.exists(p.b.driver.instance_dir(uuid))
    assert p.b.db.migration_get(mid)["status"] == states.MIG_FAILED
    with pytest.raises(exception.InstanceNotFound):
        p.b.db.instance_get(uuid)


def test_slow_prepare_outliving_its_caller_undoes_itself(pair, monkeypatch):
    p = pair
    uuid = spawn(p)
    view, mview, dinfo = _prep_args(p, uuid, "mig-slow")
    # the preparation itself takes longer than the caller waits
    real_ensure = live_destination.base_image.ensure

    def slow_ensure(*a, **kw):
        time.sleep(1.5)
        return real_ensure(*a, **kw)
    monkeypatch.setattr(live_destination.base_image, "ensure", slow_ensure)
    mview["pre_deadline"] = time.time() + 1.0
    with pytest.raises(exception.MigrationError):
        p.b.live.pre_live_migration(types.SimpleNamespace(request_id="r"), view,
                                    mview, dinfo)
    assert not os.path.exists(p.b.driver.instance_dir(uuid))
    assert p.b.db.migration_get("mig-slow")["status"] == states.MIG_FAILED
    with pytest.raises(exception.InstanceNotFound):
        p.b.db.instance_get(uuid)


def test_post_and_rollback_replayed_after_the_end_are_refused(pair):
    p = pair
    uuid = spawn(p)
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)
    dinfo = p.b.db.migration_get(mid)["extra"]["disk_info"]
    with pytest.raises(exception.PeerRefused):
        p.pa.post_live_migration_at_destination(None, B, uuid, mid, dinfo)
    with pytest.raises(exception.PeerRefused):
        p.pa.rollback_live_migration_at_destination(None, B, uuid, mid)
    with pytest.raises(exception.PeerRefused):   # another instance's uuid
        p.pa.rollback_live_migration_at_destination(None, B, str(uuidlib.uuid4()), mid)
    assert runs_on(p, uuid) == [B]
    assert p.b.db.instance_get(uuid)["state"] == states.ACTIVE


def test_rollback_refused_while_the_guest_runs_only_here(pair):
    p = pair
    uuid = spawn(p)
    p.pa.fail["post_live_migration_at_destination"] = [TimeoutError("x")] * 50
    mid = migrate(p, uuid, wait=False)
    deadline = time.monotonic() + 10
    while runs_on(p, uuid) != [B] and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(exception.MigrationError):
        p.b.live.rollback_live_migration_at_destination(None, uuid, mid)
    assert runs_on(p, uuid) == [B]
    wait_terminal(p.a, mid, timeout=30)


# -------------------------------------------------------------------- recovery
def _crash_source_at(p, uuid, step):
    """Run the flow until ``step``, then stop it there as a SIGKILL would."""
    class Killed(BaseException):
        pass

    def crash(name):
        if name == step:
            raise Killed()
    p.a.live._crash_point = crash
    mid = "mig-" + uuidlib.uuid4().hex[:8]
    p.a.live.live_migrate(context.new_context(), uuid, B, mid)
    deadline = time.monotonic() + 10
    while mid in p.a.live._threads and time.monotonic() < deadline:
        time.sleep(0.02)
    p.a.live._crash_point = lambda name: None
    p.a.live._aborts.clear()
    return mid


@pytest.mark.parametrize("step,ends_on", [
    ("live-source:queued", A), ("live-source:preparing", A),
    ("live-source:running", A), ("live-source:post-migrating", B)])
def test_source_restart_converges(pair, step, ends_on):
    p = pair
    uuid = spawn(p)
    mid = _crash_source_at(p, uuid, step)
    if step == "live-source:running":
        # libvirt keeps copying after the agent died; here: the job was cut short
        p.world.hosts[B].pop(uuid, None)
    p.a.live.recover()
    mig = wait_terminal(p.a, mid)
    if ends_on == A:
        assert_stayed_on_source(p, uuid, mid, status=mig["status"])
        assert not os.path.exists(p.b.driver.instance_dir(uuid))
    else:
        assert_completed(p, uuid, mid)
    # manageable again: it migrates once more
    if ends_on == A:
        mid2 = migrate(p, uuid)
        assert_completed(p, uuid, mid2)


def test_source_restart_after_switch_over_while_running_step(pair):
    """The agent died during the copy; libvirt finished the switch-over alone."""
    p = pair
    uuid = spawn(p)
    mid = _crash_source_at(p, uuid, "live-source:running")
    p.world.hosts[B][uuid] = {"active": True, "job_active": False}
    p.world.hosts[A].pop(uuid)
    p.a.live.recover()
    wait_terminal(p.a, mid)
    assert_completed(p, uuid, mid)


def test_recovery_waits_for_libvirtd(pair):
    p = pair
    uuid = spawn(p)
    mid = _crash_source_at(p, uuid, "live-source:preparing")
    p.world.down.add(A)
    p.a.live.recover()
    time.sleep(1.0)
    assert p.a.db.migration_get(mid)["status"] == states.MIG_PREPARING
    p.world.down.discard(A)
    wait_terminal(p.a, mid, timeout=30)
    assert_stayed_on_source(p, uuid, mid)


def test_destination_restart_while_guest_arriving_waits_for_the_job(pair):
    p = pair
    uuid = spawn(p)
    view, mview, dinfo = _prep_args(p, uuid, "mig-arr")
    p.b.live.pre_live_migration(types.SimpleNamespace(request_id="r"), view, mview,
                                dinfo)
    # the guest is still arriving when the destination agent restarts
    p.world.hosts[B][uuid] = {"active": True, "job_active": True}
    p.b.live.recover()
    time.sleep(1.0)
    assert p.b.db.instance_get(uuid)["state"] == states.MIGRATING   # not ACTIVE yet
    # the job ends: switched over, the source's domain is gone
    p.world.hosts[A].pop(uuid)
    p.world.hosts[B][uuid] = {"active": True, "job_active": False}
    wait_terminal(p.b, "mig-arr", timeout=30)
    assert p.b.db.instance_get(uuid)["state"] == states.ACTIVE
    assert p.b.db.migration_get("mig-arr")["status"] == states.MIG_COMPLETED


def test_destination_restart_while_preparing_cleans_up(pair):
    p = pair
    uuid = spawn(p)
    view, mview, dinfo = _prep_args(p, uuid, "mig-prep")

    class Killed(BaseException):
        pass

    def crash(name):
        if name == "live-dest:preparing":
            raise Killed()
    p.b.live._crash_point = crash
    with pytest.raises(Killed):
        p.b.live.pre_live_migration(types.SimpleNamespace(request_id="r"), view, mview,
                                    dinfo)
    assert p.b.db.migration_get("mig-prep")["status"] == states.MIG_PREPARING
    p.b.live._crash_point = lambda name: None
    p.b.live.recover()
    wait_terminal(p.b, "mig-prep")
    assert not os.path.exists(p.b.driver.instance_dir(uuid))
    with pytest.raises(exception.InstanceNotFound):
        p.b.db.instance_get(uuid)
    # the source's rollback of it is then answered, nothing changes
    assert p.pa.rollback_live_migration_at_destination(None, B, uuid, "mig-prep")[
        "rolled_back"] is False


def test_graceful_stop_lets_the_migration_finish(pair):
    p = pair
    uuid = spawn(p)
    p.a.driver.steps = 20
    mid = migrate(p, uuid, wait=False)
    p.a.live.stop(grace=10)
    assert p.a.db.migration_get(mid)["status"] == states.MIG_COMPLETED
    with pytest.raises(exception.MigrationError):
        p.a.live.live_migrate(context.new_context(), spawn(p), B, "mig-after-stop")


def test_graceful_stop_aborts_what_does_not_finish(pair):
    p = pair
    uuid = spawn(p)
    p.a.driver.steps = 10 ** 6
    mid = migrate(p, uuid, wait=False)
    time.sleep(0.2)
    p.a.live.stop(grace=0.5)
    assert_stayed_on_source(p, uuid, mid,
                            status=p.a.db.migration_get(mid)["status"])
    assert p.a.db.migration_get(mid)["status"] in (states.MIG_FAILED,
                                                   states.MIG_CANCELLED)


# ------------------------------------------- issue 11: progress written at an interval
def test_progress_written_every_interval_not_every_poll(pair):
    p = pair
    uuid = spawn(p)
    p.a.conf.migration.progress_interval = 3600
    p.a.driver.steps = 20
    writes = []
    orig = p.a.db.migration_update

    def counting(mid, **values):
        if "data_remaining" in values and "progress" in values and \
                values.get("progress") != 100:
            writes.append(values)
        return orig(mid, **values)
    p.a.db.migration_update = counting
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)
    assert len(writes) == 1, writes           # the first poll only


def test_progress_written_at_once_on_a_policy_decision(pair):
    p = pair
    uuid = spawn(p)
    p.a.conf.migration.progress_interval = 3600
    real = p.a.driver.live_migrate

    def with_decisions(uuid, dest, on_progress, interval=0.5, inbound_addr=None):
        n = {"i": 0}

        def wrapped(stats):
            n["i"] += 1
            conv = {"phase": "downtime-steps", "post_copy": False,
                    "decisions": [{"t": 0, "what": "downtime", "why": "x"}] * n["i"]}
            return on_progress(dict(stats, convergence=conv))
        return real(uuid, dest, wrapped, interval, inbound_addr)
    p.a.driver.live_migrate = with_decisions
    mid = migrate(p, uuid)
    assert_completed(p, uuid, mid)
    view = p.a.live.get_migration(None, mid)
    assert len(view["convergence"]["decisions"]) == p.a.driver.steps
