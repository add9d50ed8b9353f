"""Live block migration without shared storage, that survives a crash of either
agent, a lost link, libvirtd or broker restarts, and cannot race its own rollback.

Source side (``live_migrate``): the task-state compare-and-swap first (a lost race
leaves no record), then the record; queue (at most
``max_concurrent_live_migrations`` at once), ask the destination to prepare, migrate
(NON_SHARED_INC, through :meth:`LibvirtDriver.live_migrate` with a progress
callback), ask the destination to verify the backing chain (retried with backoff:
the broker may be restarting), and only then delete the source's files.  Every
failure is one :class:`LiveFailed` handled in one place (``_fail``): it asks
libvirt where the guest runs, rolls the destination back when the guest is still
here, or finishes the migration when it switched over after all.

Destination side (``pre_live_migration``, ``post_live_migration_at_destination``,
``rollback_live_migration_at_destination``), each under the instance's lock, so a
rollback waits for a preparation still running: the base through the image cache
(or pulled from the source's libvirtd), digest checked, the overlay pre-created with
the same backing file and size.  A rollback for an unknown id leaves a FAILED
tombstone, so a late preparation is refused; a preparation that outlived its
caller's deadline undoes itself.  Post and rollback are tied to the record's
instance and refused once the migration ended.

Start-up recovery (``recover``) asks libvirt on BOTH hosts where the guest runs and
whether a migration job is still active, and converges to one state: the guest runs
on exactly one host, both records agree, and the other host's files are removed only
after the chain on the running side is verified.  Peer calls are retried with
backoff until ``[migration] peer_retry_timeout``; libvirtd down at start-up makes
recovery wait for it (no crash loop).

Statuses (:class:`computeagent.compute.states.LiveStatus`; steps inside them):
  queued -> preparing (checking-destination, pre-live-migration) -> running
  (migrating) -> post-migrating (verify-at-destination) -> completed
  any status before post-migrating -> failed | cancelled (rolled-back)
"""
import concurrent.futures
import datetime
import logging
import os
import threading
import time

import tenacity

from computeagent import context
from computeagent import exception
from computeagent import utils
from computeagent.compute import background
from computeagent.compute import states
from computeagent.compute.crash import crash_point
from computeagent.compute.live_destination import DestinationSide
from computeagent.compute.live_common import LiveFailed
from computeagent.compute.live_recovery import Recovery
from computeagent.compute.locks import instance_lock
from computeagent.db.models import utcnow
from computeagent.images import qemu_img
from computeagent.rpc import schema
from computeagent.virt.migrate import MigrationJobFailed
from computeagent.virt import migration as policy

LOG = logging.getLogger(__name__)
# what an abort at stop gets to roll back (the service keeps it inside stop_timeout)
STOP_ROLLBACK_SECONDS = 25

MONITOR_INTERVAL = 0.5
S = states.LiveStatus
_short = background.short


def _iso(dt):
    return dt.isoformat() if isinstance(dt, datetime.datetime) else dt


def migration_view(m):
    return {"id": m["id"], "instance_uuid": m["instance_uuid"], "kind": m["kind"],
            "source": m["source"], "dest": m["dest"], "status": m["status"],
            "step": m.get("step"),
            "progress": m["progress"], "data_total": m["data_total"],
            "data_processed": m["data_processed"], "data_remaining": m["data_remaining"],
            "disk_total": m.get("disk_total", 0),
            "disk_processed": m.get("disk_processed", 0),
            "memory_processed": m.get("memory_processed", 0),
            "downtime_ms": m["downtime_ms"], "error": utils.redact_urls(m["error"]),
            "started_at": _iso(m["started_at"]), "finished_at": _iso(m["finished_at"]),
            # not the internal ``extra`` (it holds the old domain XML): only what the
            # destination reported about the base it prepared
            "dest_prepare": (m.get("extra") or {}).get("dest_prepare"),
            # issue 11: the convergence policy's step, downtime, throttle, post-copy
            "convergence": (m.get("extra") or {}).get("convergence")}


class LiveMigrationFlows(DestinationSide, Recovery):
    def __init__(self, manager, peer_api):
        self.m = manager
        self.conf = manager.conf
        self.host = manager.conf.host
        self.db = manager.db
        self.driver = manager.driver
        self.cache = manager.image_cache
        self.notifier = manager.notifier
        self.peer = peer_api          # ComputeAgentAPI for agent-to-agent calls
        self._slots = threading.BoundedSemaphore(
            self.conf.migration.max_concurrent_live_migrations)
        self._aborts = {}             # migration id -> threading.Event
        self._threads = {}            # migration id -> its thread (joined on stop)
        self._recovering = {}         # migration id -> its recovery thread
        self._stopping = threading.Event()
        self._stop_abort_at = None    # monotonic time after which jobs are aborted

    # ---------------------------------------------------------------- records
    def _set(self, mid, status, step=None, **values):
        """Move the record to ``status`` (a CAS the state machine must allow)."""
        status = getattr(status, "value", status)
        LOG.info("live migration %s: -> %s (%s)", mid, status, step or "")
        return self.db.migration_update(mid, status=status, step=step or status,
                                        **values)

    def _upd(self, mid, **values):
        return self.db.migration_update(mid, **values)

    def _crash_point(self, name):
        crash_point(self.conf, name)

    @staticmethod
    def _lock(uuid):
        """The instance's lock (per process: the agent is its only writer)."""
        return instance_lock(uuid)

    def _retry_for(self):
        return self.conf.migration.peer_retry_timeout

    def _peer_call(self, method, host, *args, retry_for=0, timeout=None, **kwargs):
        timeout = timeout or self.conf.rpc_call_timeout
        return background.call_with_retry(
            lambda: getattr(self.peer, method)(context.to_rpc(), host, *args,
                                               timeout=timeout, **kwargs),
            retry_for, what="%s on %s" % (method, host))

    def _local_facts(self, uuid):
        """:meth:`LibvirtDriver.domain_facts` here, retried while libvirtd is
        reconnecting (HypervisorUnavailable after ``peer_retry_timeout``)."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(exception.HypervisorUnavailable),
            wait=tenacity.wait_exponential(multiplier=0.5, max=5),
            stop=tenacity.stop_after_delay(self._retry_for()), reraise=True)
        return retrying(self.driver.domain_facts, uuid)

    def _peer_facts(self, host, uuid, retry_for):
        """What the libvirtd of ``host`` has for ``uuid`` (retried while it
        cannot be asked; HypervisorUnavailable after ``retry_for`` seconds)."""
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(exception.HypervisorUnavailable),
            wait=tenacity.wait_exponential(multiplier=0.5, max=5),
            stop=tenacity.stop_after_delay(retry_for), reraise=True)
        return retrying(self.driver.peer_domain_facts, host, uuid)

    # ------------------------------------------------------------------ source
    def live_migrate(self, ctx, uuid, dest, migration_id, block_migration=True):
        uuid = schema.uuid_of(uuid)
        dest = schema.host_name(dest)
        migration_id = schema.migration_id(migration_id)
        if not isinstance(block_migration, bool):
            raise exception.InvalidInput(reason="block_migration must be a boolean")
        with self._lock(uuid):
            try:
                existing = self.db.migration_get(migration_id)
                LOG.info("live_migrate %s: duplicate of migration %s (%s); ignored",
                         uuid, migration_id, existing["status"])
                return
            except exception.MigrationNotFound:
                pass
            inst = self.m._get_own(uuid)
            if dest == self.host:
                raise exception.InvalidInput(reason="destination is this host")
            if not block_migration:
                raise exception.InvalidInput(
                    reason="only block migration is supported (no shared storage)")
            if self._stopping.is_set():
                raise exception.MigrationError(reason="the agent is stopping")
            if inst["state"] != states.ACTIVE or inst["task_state"] is not None:
                raise exception.InstanceInvalidState(
                    uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                    action="live_migrate", needed="ACTIVE with no task")
            # the task-state CAS first: a lost race leaves no record behind
            self.db.instance_update(uuid, expected_task_state=[None],
                                    state=states.MIGRATING,
                                    task_state=states.MIGRATING_TASK)
            mig = self.db.migration_create({
                "id": migration_id, "instance_uuid": uuid, "kind": "live",
                "source": self.host, "dest": dest, "status": states.MIG_QUEUED,
                "step": "queued", "progress": 0, "data_total": 0,
                "data_processed": 0, "data_remaining": 0, "extra": {"role": "source"}})
            if mig is None:       # the same id raced in for another instance
                self.db.instance_update(uuid, state=states.ACTIVE, task_state=None)
                return
            self._aborts[migration_id] = threading.Event()
        self.notifier.instance(ctx, inst, "live_migration", "start",
                               migration_id=migration_id, dest=dest)
        self._start_thread("migration-%s" % migration_id, migration_id, self._run_safe,
                           ctx, uuid, migration_id)

    def _start_thread(self, name, mid, fn, *args, tracked=None):
        """A migration's thread, remembered (``stop`` joins migration threads with
        a deadline; recovery threads, in ``_recovering``, are not waited for)."""
        tracked = self._threads if tracked is None else tracked

        def run():
            try:
                fn(*args)
            except Exception:
                LOG.exception("%s failed", name)
            finally:
                tracked.pop(mid, None)
        t = threading.Thread(target=run, name=name, daemon=True)
        tracked[mid] = t
        t.start()
        return t

    def _run_safe(self, ctx, uuid, mid):
        try:
            context.adopt(ctx)
            with self._lock(uuid):
                try:
                    self._run(ctx, uuid, mid)
                except LiveFailed as e:
                    self._fail(ctx, uuid, mid, e)
                except Exception as e:
                    LOG.exception("live migration %s failed", mid)
                    self._fail(ctx, uuid, mid, LiveFailed(
                        "internal error: %s" % _short(e), rollback_dest=True))
        finally:
            self._aborts.pop(mid, None)

    def _run(self, ctx, uuid, mid):
        abort = self._aborts[mid]
        # queued: wait for a slot, abortable
        while not self._slots.acquire(timeout=0.2):
            if abort.is_set():
                raise LiveFailed("aborted while queued", states.MIG_CANCELLED)
        try:
            self._crash_point("live-source:queued")
            if abort.is_set():
                raise LiveFailed("aborted while queued", states.MIG_CANCELLED)
            self._migrate(ctx, uuid, mid, abort)
        finally:
            self._slots.release()

    def disk_info(self, inst):
        disk = self.driver.disk_path(inst["uuid"])
        info = qemu_img.info(disk, "qcow2")
        backing = info.get("full-backing-filename") or info.get("backing-filename")
        image_id = inst["image"].get("id")
        return {"path": disk, "format": "qcow2", "virtual_size": info["virtual-size"],
                "backing_file": backing,
                "backing_format": info.get("backing-filename-format"),
                "image_id": image_id,
                "base_digest": self.cache.digest(image_id) if image_id else None,
                # the destination asks this libvirtd for the drive only if there is one
                "config_drive": os.path.exists(self.driver.config_drive_path(inst["uuid"]))}

    def _migrate(self, ctx, uuid, mid, abort):
        mig = self._set(mid, S.PREPARING, step="checking-destination",
                        started_at=utcnow())
        dest = mig["dest"]
        # 1. destination alive and has room, asked while this side reads its disk
        asking = background.call("status-%s" % mid, lambda: self.peer.get_host_status(
            context.to_rpc(ctx), dest, timeout=10))
        inst = self.db.instance_get(uuid)
        dinfo = self.disk_info(inst)
        try:
            status = asking.result()
        except Exception as e:
            raise LiveFailed("destination %s not reachable: %s" % (dest, _short(e)))
        need_mb = inst["flavor"]["memory_mb"]
        if not status.get("libvirt_connected"):
            raise LiveFailed("destination %s has no libvirt connection" % dest)
        if status.get("free_ram_mb", 0) < need_mb:
            raise LiveFailed("destination %s has %s MiB free, needs %s"
                             % (dest, status.get("free_ram_mb"), need_mb))
        if dinfo["backing_file"] is None:
            raise LiveFailed("source disk has no backing file")
        # 2. destination prepares base + overlay (written before it is sent: a
        #    crash from here on must roll the destination back)
        extra = {"role": "source", "prep_sent": True, "disk_info": dinfo}
        mig = self._upd(mid, step="pre-live-migration", extra=extra)
        self._crash_point("live-source:preparing")
        view = {k: inst[k] for k in ("uuid", "name", "flavor", "image", "networks",
                                     "metadata")}
        timeout = self.conf.migration.pre_live_migration_timeout
        mview = migration_view(mig)
        # oslo.messaging still delivers a call after the caller gave up: the
        # destination refuses (or undoes) a preparation past its deadline.
        mview["pre_deadline"] = time.time() + timeout
        prep = self._watching_dest(
            lambda: self.peer.pre_live_migration(context.to_rpc(ctx), dest, view, mview,
                                                 dinfo, timeout=timeout),
            dest, mid, "pre-migration")
        if abort.is_set():
            raise LiveFailed("aborted", states.MIG_CANCELLED, rollback_dest=True)
        # 3. migrate
        extra["dest_prepare"] = prep
        self._set(mid, S.RUNNING, step="migrating", extra=extra)
        mc = self.conf.migration
        peak = {}
        written = {"at": None, "decisions": 0}

        def on_progress(stats):
            if abort.is_set():
                return "aborted by request"
            if self._stop_abort_at is not None and time.monotonic() > self._stop_abort_at:
                return "agent stopping: migration did not finish in time"
            if not stats:
                return None
            pct, total, processed, remaining = policy.progress(stats)
            for k, v in policy.byte_counters(stats).items():
                peak[k] = max(peak.get(k, 0), v)
            # the completion deadline is the convergence policy's (virt/migration.py);
            # the record is written every progress_interval s, or at once on a decision
            conv = stats.get("convergence")
            now = time.monotonic()
            n = len(conv["decisions"]) if conv else 0
            if written["at"] is None or n != written["decisions"] or \
                    now - written["at"] >= mc.progress_interval:
                if conv:
                    extra["convergence"] = conv
                self._upd(mid, progress=pct, data_total=total, data_processed=processed,
                          data_remaining=remaining, extra=extra, **peak)
                written.update(at=now, decisions=n)
            if processed > 0:
                self._crash_point("live-source:running")
            return None

        try:
            last, completed = self.driver.live_migrate(
                uuid, dest, on_progress, MONITOR_INTERVAL,
                inbound_addr=(prep or {}).get("inbound_addr"))
        except MigrationJobFailed as e:
            if (extra.get("convergence") or {}).get("post_copy"):
                # issue 11: never roll back a post-copy that failed (guest split)
                self._post_copy_failed(ctx, uuid, mid, str(e), dinfo)
                return
            raise LiveFailed(str(e), states.MIG_CANCELLED if str(e) == "aborted by "
                             "request" else states.MIG_FAILED, rollback_dest=True)
        # 4. switch-over done: the guest runs on the destination now.
        self._switched_over(ctx, uuid, mid, dinfo, dict(last, **completed))

    def _post_copy_failed(self, ctx, uuid, mid, why, dinfo):
        """The job failed after the switch to post-copy: the guest ran on the
        destination while part of its memory was only here. Rolling either side
        back destroys the guest for good, so: unless the destination runs it
        (switch-over finished after all), both copies stay as they are (QEMU
        pauses them), the record says so and the instance goes to ERROR."""
        dest = self.db.migration_get(mid)["dest"]
        here = self._local_facts(uuid)
        try:
            there = self._peer_facts(dest, uuid, min(30, self._retry_for()))
        except exception.HypervisorUnavailable as e:
            there = "unknown (%s)" % _short(e)
        if here is None and isinstance(there, dict) and there["active"] and \
                there["power_state"] == states.POWER_RUNNING:
            LOG.warning("live migration %s: post-copy ended on %s after all", mid, dest)
            self._switched_over(ctx, uuid, mid, dinfo, {})
            return
        if isinstance(here, dict) and here["power_state"] == states.POWER_RUNNING and \
                there is None:
            # the switch never happened (libvirt resumed the guest here): whole here
            raise LiveFailed("%s (post-copy had not begun; the guest runs here)" % why,
                             rollback_dest=True)
        reason = ("post-copy failed (%s): the guest's memory is split between %s (%s) "
                  "and %s (%s); neither side rolled back. Resume with virsh migrate "
                  "--postcopy-resume when the link is back, or decide which copy to "
                  "destroy (docs/operations.md)" % (
                      why, self.host, here and here["power_state"], dest,
                      there["power_state"] if isinstance(there, dict) else there))
        LOG.error("live migration %s: %s", mid, reason)
        self._set(mid, S.FAILED, step="post-copy-failed", error=reason[:4000],
                  finished_at=utcnow())
        self._restore(ctx, uuid, mid, reason, state=states.ERROR)

    def _watching_dest(self, fn, dest, mid, what, poll=5.0, done_when=None):
        """``fn()`` (a long call to ``dest``) while asking ``dest`` every ``poll``
        seconds how its record of ``mid`` stands: a destination that restarted in
        the middle has ended its record (and will never answer the call), so the
        source gives up at once instead of at the call's timeout -- or, when
        ``done_when(record)`` says that ended record is the answer wanted, returns
        that record's answer (``done_when``'s value)."""
        calling = background.call("%s-%s" % (what, mid), fn)
        while True:
            concurrent.futures.wait([calling], timeout=poll)
            if calling.done():
                break
            try:
                there = self.peer.get_migration(context.to_rpc(), dest, mid,
                                                timeout=poll)
            except Exception:
                continue
            if there.get("status") in states.MIG_TERMINAL:
                answer = done_when(there) if done_when is not None else None
                if answer is not None:
                    return answer
                raise LiveFailed("%s on %s: its record is %s (%s)" % (
                    what, dest, there["status"], there.get("error")), rollback_dest=True)
        error = calling.exception()
        if error is not None:
            if done_when is not None:
                raise error                # the caller retries or judges it
            raise LiveFailed("%s on %s failed: %s" % (what, dest, _short(error)),
                             rollback_dest=True)
        return calling.result()

    def _switched_over(self, ctx, uuid, mid, dinfo, stats):
        mig = self.db.migration_get(mid)
        if mig["status"] != states.MIG_POST:
            self._set(mid, S.POST, step="verify-at-destination", progress=100,
                      data_remaining=0)
        self._crash_point("live-source:post-migrating")
        dest = mig["dest"]
        try:
            post = background.call_with_retry(
                lambda: self._post_at_dest(dest, uuid, mid, dinfo), self._retry_for(),
                what="post_live_migration_at_destination on %s" % dest)
        except Exception as e:
            # The guest is on the destination but unverified: keep our files and
            # our record (in ERROR) for the operator.
            reason = "post-migration at %s failed: %s" % (dest, _short(e))
            LOG.error("live migration %s: %s", mid, reason)
            self._set(mid, S.FAILED, step="source-files-kept", error=reason[:4000],
                      finished_at=utcnow())
            try:
                self.db.instance_update(uuid, state=states.ERROR, task_state=None,
                                        fault=reason[:4000])
            except exception.InstanceNotFound:
                pass
            self.notifier.instance(ctx, {"uuid": uuid, "host": dest,
                                         "state": states.ERROR},
                                   "live_migration", "error", fault=reason,
                                   migration_id=mid, source_files_kept=True)
            return
        # The source's own statistics count what it sent (disk included); the
        # destination's only fill gaps (its disk_* are 0: it received, not copied).
        stats = dict(post.get("job_stats") or {}, **stats)
        _pct, total, processed, _rem = policy.progress(stats) if stats else (0, 0, 0, 0)
        values = {"finished_at": utcnow(), "progress": 100, "data_remaining": 0}
        if stats.get("downtime") is not None:
            values["downtime_ms"] = int(stats["downtime"])
        if total:
            values["data_total"], values["data_processed"] = total, processed
            # counters only grow: a last poll may have seen more than the summary
            values.update({k: v for k, v in policy.byte_counters(stats).items()
                           if v and v > (mig.get(k) or 0)})
        # 5. the destination verified the chain: only now delete what we had
        self.driver.destroy(uuid)      # normally gone already (UNDEFINE_SOURCE)
        self.db.instance_destroy(uuid)
        self.driver.remove_instance_dir(uuid)
        self._set(mid, S.COMPLETED, step="source-cleaned", **values)
        self.notifier.instance(ctx, {"uuid": uuid, "host": dest, "state": states.ACTIVE},
                               "live_migration", "end", migration_id=mid,
                               downtime_ms=values.get("downtime_ms"))
        LOG.info("live migration %s of %s to %s completed", mid, uuid, dest)

    def _post_at_dest(self, dest, uuid, mid, dinfo):
        """Ask the destination to verify; when it refuses because its record has
        already completed (our earlier call was executed but its reply lost, or
        its own recovery verified), that is the answer we wanted."""
        def verified_there(there):
            # the destination restarted meanwhile and its recovery verified the
            # arrival: our call will never be answered, and need not be
            if there.get("instance_uuid") == uuid and \
                    there.get("status") == states.MIG_COMPLETED:
                return {"verified": True, "job_stats": {}}
            return None
        try:
            return self._watching_dest(
                lambda: self.peer.post_live_migration_at_destination(
                    context.to_rpc(), dest, uuid, mid, dinfo,
                    timeout=self.conf.rpc_call_timeout),
                dest, mid, "post-migration", done_when=verified_there)
        except LiveFailed as e:
            # its record ended otherwise (chain check failed): no retry helps
            raise exception.MigrationError(reason=e.reason)
        except exception.MigrationError:
            there = self.peer.get_migration(context.to_rpc(), dest, mid, timeout=10)
            if there.get("instance_uuid") == uuid and \
                    there.get("status") == states.MIG_COMPLETED:
                return {"verified": True, "job_stats": {}}
            raise

    def _rollback_dest(self, dest, uuid, mid):
        """Roll the destination back (retried with backoff); False if it could
        not be reached (its own recovery cleans up when it comes back)."""
        try:
            self._peer_call("rollback_live_migration_at_destination", dest, uuid, mid,
                            retry_for=self._retry_for())
            return True
        except exception.PeerRefused as e:
            LOG.warning("rollback at %s of %s refused: %s", dest, mid, _short(e))
            return False
        except Exception as e:
            LOG.warning("rollback at %s of %s: %s", dest, mid, _short(e))
            return False

    def _fail(self, ctx, uuid, mid, failure):
        """The one failure path of the source: find out where the guest runs and
        converge -- finish the migration when it switched over after all, else
        roll the destination back and keep the guest here."""
        mig = self.db.migration_get(mid)
        if mig["status"] in states.MIG_TERMINAL:
            return
        extra = mig.get("extra") or {}
        rollback = failure.rollback_dest or extra.get("prep_sent", False)
        LOG.warning("live migration %s (%s): %s", mid, mig["status"], failure.reason)
        here = self._local_facts(uuid)
        if here is not None and here["job_active"]:
            self.driver.abort_migration(uuid)
            here = self._wait_job_end(self._local_facts, uuid, 60)
        if mig["status"] == states.MIG_POST or (rollback and (here is None or
                                                            not here["active"])):
            # the guest is not running here: did it switch over?
            try:
                # an incoming domain is "active" while its job runs: only one
                # whose job ended has the guest
                there = self._wait_job_end(
                    lambda u: self._peer_facts(mig["dest"], u, self._retry_for()),
                    uuid, 60)
            except exception.HypervisorUnavailable:
                there = "unknown"
            if there not in (None, "unknown") and there["active"] and \
                    not there["job_active"]:
                LOG.warning("live migration %s: the guest runs on %s after all; "
                            "finishing", mid, mig["dest"])
                self._switched_over(ctx, uuid, mid, extra.get("disk_info") or {}, {})
                return
            if here is None:
                reason = "%s; the guest runs on neither host (%s: %s); files kept" % (
                    failure.reason, mig["dest"], there)
                self._set(mid, S.FAILED, step="guest-lost", error=reason[:4000],
                          finished_at=utcnow())
                self._restore(ctx, uuid, mid, reason, state=states.ERROR)
                return
        if rollback:
            self._upd(mid, step="rolling-back")
            if not self._rollback_dest(mig["dest"], uuid, mid):
                failure.reason += "; destination not rolled back (it cleans up on " \
                                  "its restart)"
        if here is not None and not here["active"]:
            self.driver.power_on(uuid)
        self._set(mid, failure.status, step="rolled-back" if rollback else "not-started",
                  error=failure.reason[:4000], finished_at=utcnow())
        self._restore(ctx, uuid, mid, failure.reason)

    def _restore(self, ctx, uuid, mid, reason, state=states.ACTIVE):
        try:
            inst = self.db.instance_update(
                uuid, state=state, task_state=None,
                power_state=self.driver.power_state(uuid),
                fault=reason[:4000] if state == states.ERROR else None)
        except exception.InstanceNotFound:
            return
        self.notifier.instance(ctx, inst, "live_migration", "error", fault=reason,
                               migration_id=mid)

    @staticmethod
    def _wait_job_end(facts_fn, uuid, timeout):
        deadline = time.monotonic() + timeout
        facts = facts_fn(uuid)
        while facts is not None and facts["job_active"] and time.monotonic() < deadline:
            time.sleep(0.5)
            facts = facts_fn(uuid)
        return facts

    def get_migration(self, ctx, mid):
        return migration_view(self.db.migration_get(schema.migration_id(mid)))

    def list_migrations(self, ctx):
        return [migration_view(m) for m in self.db.migration_get_all()]

    def abort_migration(self, ctx, mid):
        mid = schema.migration_id(mid)
        mig = self.db.migration_get(mid)
        ev = self._aborts.get(mid)
        if mig["status"] in states.MIG_TERMINAL or ev is None:
            LOG.info("abort of %s ignored: status %s", mid, mig["status"])
            return
        if mig["status"] == states.MIG_POST:
            LOG.info("abort of %s ignored: already switched over", mid)
            return
        ev.set()
        if mig["status"] == states.MIG_RUNNING:
            self.driver.abort_migration(mig["instance_uuid"])

    # ---------------------------------------------------------- graceful stop
    def stop(self, grace=None):
        """SIGTERM: take no new migrations; let running ones finish for ``grace``
        seconds (``[migration] stop_grace``), then abort them (rolled back, the
        guest stays here) and wait for that too.  Queued ones are cancelled."""
        grace = self.conf.migration.stop_grace if grace is None else grace
        self._stopping.set()
        for mid, ev in list(self._aborts.items()):
            try:
                if self.db.migration_get(mid)["status"] == states.MIG_QUEUED:
                    ev.set()
            except exception.MigrationNotFound:
                pass
        self._stop_abort_at = time.monotonic() + grace
        deadline = self._stop_abort_at + STOP_ROLLBACK_SECONDS
        for mid, t in list(self._threads.items()):
            t.join(max(0.0, self._stop_abort_at - time.monotonic()))
        for mid, t in list(self._threads.items()):
            if t.is_alive():
                LOG.warning("live migration %s still running at stop: aborting", mid)
                ev = self._aborts.get(mid)
                if ev is not None:
                    ev.set()
                try:
                    mig = self.db.migration_get(mid)
                    if mig["status"] == states.MIG_RUNNING:
                        self.driver.abort_migration(mig["instance_uuid"])
                except Exception:
                    LOG.exception("abort of %s at stop", mid)
        for mid, t in list(self._threads.items()):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                LOG.error("live migration %s did not end before the stop deadline; "
                          "recovery converges it at the next start", mid)
