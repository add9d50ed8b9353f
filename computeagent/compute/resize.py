"""Resize and cold migration, with confirm and revert, that survive a crash at any
step and cannot lose a guest to a race or a stray message (no ssh trust between
hypervisors, no orphans).

State machine: :class:`computeagent.compute.states.ResizeStatus` and its transition
table; every status change is a compare-and-swap in the database, so of two racing
operations (confirm against revert, a double click, auto-confirm against a user's
revert, a late rollback against a finished resize) exactly one wins and the other
is refused without touching anything.  Every step is written to the record
*before* it is taken, so a restarted agent knows where it stood (``recover``).
Every operation on an instance, on either host, holds that instance's lock
(:mod:`computeagent.compute.locks`).

Until the destination reports VERIFY_RESIZE the source decides: on any doubt it
rolls back (destination cleaned first, then the source restores its set-aside disk
and starts the guest), so the guest never runs on two hosts.  After VERIFY_RESIZE
the destination owns the instance and drives confirm/revert; the source deletes its
set-aside copy (confirm) only once the destination's libvirtd shows the guest
defined there, and starts its copy again (revert) only once the destination's
libvirtd shows the guest not running there.

Statuses (steps inside them):
  queued -> preparing -> migrating (powering-off, moving-aside, copying) ->
  finishing -> verify-resize -> confirming -> confirmed
                             \\-> reverting  -> reverted
  any status before verify-resize (step rolling-back) -> failed
Files: the source keeps ``<uuid>_resize/`` (its overlay, untouched) until confirm;
the destination receives only the overlay into ``<uuid>/disk`` through libvirt
(storage volume upload into a pool on its instance dir), verified by sha256.
"""
import hashlib
import logging
import os
import shutil
import signal
import time

from computeagent import context
from computeagent import exception
from computeagent.compute import background
from computeagent.compute import base_image
from computeagent.compute import states
from computeagent.compute.locks import instance_lock
from computeagent.db.models import utcnow
from computeagent.images import chain as disk_chain
from computeagent.images import inspect
from computeagent.images import qemu_img
from computeagent.rpc import schema
from computeagent.virt import guest as vguest
from computeagent.virt import storage

LOG = logging.getLogger(__name__)
GiB = 1024 ** 3

S = states.ResizeStatus
ACTIVE_STATUSES = tuple(s.value for s in S if s.value not in states.RESIZE_TERMINAL)
TERMINAL = states.RESIZE_TERMINAL
RESIZE_TASK = states.RESIZE_TASK
#: seconds one attempt of the (retried, idempotent) confirm/revert call to the
#: source waits for its answer
CONFIRM_CALL_TIMEOUT = 10
_short = background.short


class ResizeFailed(Exception):
    """The one failure path of the source's flow: raised at any step, handled once
    in ``_run_safe`` by rolling back both sides."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ResizeFlows:
    def __init__(self, manager, peer_api):
        self.m = manager
        self.conf = manager.conf
        self.host = manager.conf.host
        self.db = manager.db
        self.driver = manager.driver
        self.cache = manager.image_cache
        self.notifier = manager.notifier
        self.peer = peer_api
        self._busy = set()          # migration ids with a confirm/revert thread here

    # ----------------------------------------------------------- test hooks
    def _crash_point(self, name):
        """Tests only: ``[debug] crash_at`` names points where the agent kills
        itself with SIGKILL, to prove recovery."""
        if name in self.conf.debug.crash_at:
            LOG.error("CRASH POINT %s: killing myself with SIGKILL", name)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)

    # ---------------------------------------------------------------- records
    def _set(self, mid, status, step=None, **values):
        """Move the record to ``status`` (a CAS the state machine must allow)."""
        LOG.info("resize %s: -> %s (%s)", mid, getattr(status, "value", status),
                 step or "")
        return self.db.migration_update(mid, status=status, step=step or
                                        getattr(status, "value", status), **values)

    def _step(self, mid, step, **values):
        LOG.info("resize %s: step %s", mid, step)
        return self.db.migration_update(mid, step=step, **values)

    def _same_host(self, mig):
        return mig["source"] == mig["dest"]

    def _resize_dir(self, uuid):
        return self.driver.instance_dir(uuid) + "_resize"

    def _call(self, host, method, *args, retry_for=0, **kwargs):
        """Agent-to-agent call; on this host a direct call. With ``retry_for`` the
        call is retried with backoff (the peer may be restarting)."""
        timeout = kwargs.pop("timeout", None) or self.conf.rpc_call_timeout
        if host == self.host:
            return getattr(self, method)(context.new_context(), *args, **kwargs)
        return background.call_with_retry(
            lambda: getattr(self.peer, method)(context.to_rpc(), host, *args,
                                               timeout=timeout, **kwargs),
            retry_for, what="%s on %s" % (method, host))

    def _call_done_if(self, done, host, method, uuid, mid):
        """A confirm/revert call to the source, retried; a refusal because the
        source already records ``done`` (our first call's answer was lost) is
        success."""
        try:
            # each attempt waits CONFIRM_CALL_TIMEOUT, not rpc_call_timeout: the call
            # is quick and idempotent, and a source that died while handling it
            # (its restart finishes the confirm/revert itself) is asked again after
            # seconds instead of half a minute
            return self._call(host, method, uuid, mid, retry_for=600,
                              timeout=min(CONFIRM_CALL_TIMEOUT,
                                          self.conf.rpc_call_timeout))
        except exception.PeerRefused as e:
            if e.kwargs.get("status") == done.value:
                LOG.info("%s of %s: the source is already %s", method, mid, done.value)
                return {}
            raise

    def _mig_view(self, mid):
        mig = self.db.migration_get(mid)
        keys = ("id", "instance_uuid", "kind", "source", "dest", "status", "step",
                "old_flavor", "new_flavor")
        return {k: mig[k] for k in keys}

    def _own_migration(self, uuid, mid, role):
        """Validated ids and the record of ``mid``, which must be of ``uuid`` and
        have this host in ``role`` (``source`` or ``dest``)."""
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        mig = self.db.migration_get(mid)
        if mig["kind"] != "resize" or mig["instance_uuid"] != uuid:
            raise exception.InvalidInput(reason="migration %s is not a resize of %s"
                                         % (mid, uuid))
        if mig[role] != self.host:
            raise exception.MigrationError(reason="%s is not the %s of %s"
                                           % (self.host, role, mid))
        return uuid, mid, mig

    # ------------------------------------------------------------ source: cast
    def resize(self, ctx, uuid, dest, flavor, mid):
        uuid = schema.uuid_of(uuid)
        dest = schema.host_name(dest)
        mid = schema.migration_id(mid)
        flavor = schema.validate_flavor(flavor)
        with instance_lock(uuid):
            try:
                existing = self.db.migration_get(mid)
                LOG.info("resize %s: duplicate of migration %s (%s); ignored", uuid,
                         mid, existing["status"])
                return
            except exception.MigrationNotFound:
                pass
            inst = self.m._get_own(uuid)
            base = {"id": mid, "instance_uuid": uuid, "kind": "resize",
                    "source": self.host, "dest": dest, "progress": 0, "data_total": 0,
                    "data_processed": 0, "data_remaining": 0,
                    "old_flavor": inst["flavor"], "new_flavor": flavor}
            if flavor["root_gb"] < inst["flavor"]["root_gb"]:
                reason = "shrinking the root disk from %d to %d GiB is refused" % (
                    inst["flavor"]["root_gb"], flavor["root_gb"])
                self.db.migration_create(dict(base, status=S.FAILED.value,
                                              step="refused", error=reason, extra={}))
                raise exception.InvalidInput(reason=reason)
            if inst["state"] not in (states.ACTIVE, states.STOPPED):
                raise exception.InstanceInvalidState(
                    uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                    action="resize", needed="ACTIVE or STOPPED with no task")
            # the task-state CAS first: a lost race leaves no record behind
            self.db.instance_update(uuid, expected_task_state=[None],
                                    state=states.MIGRATING, task_state=RESIZE_TASK)
            view = {k: inst[k] for k in ("uuid", "name", "flavor", "image", "networks",
                                         "metadata")}
            was_running = inst["state"] == states.ACTIVE
            self.db.migration_create(dict(
                base, status=S.QUEUED.value, step="queued", started_at=utcnow(),
                extra={"role": "source", "instance": view, "was_running": was_running}))
        self.notifier.instance(ctx, inst, "resize", "start", migration_id=mid,
                               dest=dest)
        background.start("resize-%s" % mid, self._run_safe, ctx, uuid, mid)

    def _run_safe(self, ctx, uuid, mid):
        context.adopt(ctx)
        with instance_lock(uuid):
            try:
                self._run(ctx, uuid, mid)
            except ResizeFailed as e:
                self._rollback_source(ctx, mid, str(e))
            except Exception as e:
                LOG.exception("resize %s failed", mid)
                self._rollback_source(ctx, mid, "resize failed: %s" % _short(e))

    def _run(self, ctx, uuid, mid):
        mig = self.db.migration_get(mid)
        extra = dict(mig["extra"])
        view = extra["instance"]
        dest = mig["dest"]
        same = self._same_host(mig)
        disk = self.driver.disk_path(uuid)

        # 1. destination prepares (capacity, base, instance dir)
        self._set(mid, S.PREPARING)
        dinfo = self.m.live.disk_info(view)
        extra["disk_info"] = dinfo
        self.db.migration_update(mid, extra=extra)
        try:
            if not same:
                # a quick liveness check before the long preparation call
                self.peer.get_host_status(context.to_rpc(), dest, timeout=10)
            timeout = self.conf.migration.pre_live_migration_timeout
            mview = self._mig_view(mid)
            # a call is still delivered after the caller gave up: the destination
            # refuses a preparation that arrives after its deadline
            mview["pre_deadline"] = time.time() + timeout
            extra["prep_sent"] = True
            self.db.migration_update(mid, extra=extra)
            self._call(dest, "prep_resize", view, mview, dinfo, timeout=timeout)
        except Exception as e:
            raise ResizeFailed("preparation on %s failed: %s" % (dest, _short(e)))

        # 2. power off (ACPI with a timeout, then destroy); keep the old XML
        self._set(mid, S.MIGRATING, step="powering-off")
        old_xml = self.driver.inactive_xml(uuid)
        if old_xml is not None:
            extra["old_xml"] = old_xml
            self.db.migration_update(mid, extra=extra)
            self.driver.power_off(uuid)
        self._crash_point("source:after-power-off")

        # 3. set the source's files aside; the old domain definition is saved in
        #    the record, so undefine it (no domain for this uuid on two hosts)
        self._step(mid, "moving-aside")
        if os.path.isdir(self.driver.instance_dir(uuid)) and \
                not os.path.exists(self._resize_dir(uuid)):
            os.rename(self.driver.instance_dir(uuid), self._resize_dir(uuid))
        if old_xml is not None:
            self.driver.destroy(uuid)

        # 4. copy only the overlay, digest first
        self._step(mid, "copying")
        src = os.path.join(self._resize_dir(uuid), "disk")
        digest = _sha256(src)
        size = os.path.getsize(src)
        extra["overlay_sha256"] = digest
        extra["overlay_bytes"] = size
        self.db.migration_update(mid, extra=extra, data_total=size)
        if same:
            self.driver.make_instance_dir(uuid)
            shutil.copyfile(src, disk)
            self._crash_point("source:during-copy")
        else:
            self._upload(dest, uuid, src)
        self.db.migration_update(mid, data_processed=size, progress=50)
        self._crash_point("source:after-copy")

        # 5. destination finishes: rebase if needed, grow, verify, define, start
        self._set(mid, S.FINISHING)
        new_view = dict(view, flavor=mig["new_flavor"])
        try:
            self._call(dest, "finish_resize", new_view, self._mig_view(mid),
                       dict(dinfo, overlay_sha256=digest),
                       timeout=self.conf.migration.resize_finish_timeout)
        except Exception as e:
            raise ResizeFailed("finishing on %s failed: %s" % (dest, _short(e)))
        self._source_finished(ctx, mid)

    def _upload(self, dest, uuid, src):
        def progress(n):
            if n > 0:
                self._crash_point("source:during-copy")

        storage.upload(self.driver.peer_uri(dest), self.driver.instance_dir(uuid),
                       "disk", src, progress_cb=progress)

    def _source_finished(self, ctx, mid):
        mig = self.db.migration_get(mid)
        uuid = mig["instance_uuid"]
        if not self._same_host(mig):
            self.db.instance_destroy(uuid)       # the destination owns it now
            self._set(mid, S.VERIFY_RESIZE, progress=100)
        self.notifier.instance(ctx, {"uuid": uuid, "host": mig["dest"],
                                     "state": states.RESIZE_VERIFY},
                               "resize", "end", migration_id=mid)

    # ------------------------------------------------------- source: rollback
    def _rollback_source(self, ctx, mid, reason):
        """Undo on both sides, destination first; then restore and start the
        guest on the source. Idempotent: safe to run again after a crash."""
        mig = self.db.migration_get(mid)
        if mig["status"] in TERMINAL:
            return
        LOG.warning("resize %s: rolling back: %s", mid, reason)
        mig = self._step(mid, "rolling-back", error=reason[:4000])
        uuid = mig["instance_uuid"]
        extra = mig["extra"] or {}
        if not self._same_host(mig) and extra.get("prep_sent"):
            try:
                res = self._call(mig["dest"], "resize_rollback_at_dest", uuid, mid,
                                 retry_for=600)
            except Exception as e:
                LOG.error("resize %s: destination rollback failed: %s", mid, e)
                self.db.migration_update(mid, error="%s; destination rollback failed: "
                                         "%s" % (reason, _short(e)))
                return
            if res.get("state") == S.VERIFY_RESIZE.value:
                # The destination had finished before we lost track: keep it.
                LOG.info("resize %s: destination already finished", mid)
                self._source_finished(ctx, mid)
                return
        elif self._same_host(mig):
            self._undo_same_host_dest(uuid)
        self._restore_source(uuid, extra)
        self._set(mid, S.FAILED, step="rolled-back", finished_at=utcnow())
        self.notifier.instance(ctx, {"uuid": uuid, "host": self.host,
                                     "state": states.ACTIVE}, "resize", "error",
                               fault=reason, migration_id=mid)

    def _undo_same_host_dest(self, uuid):
        """Same-host resize: remove the new copy (only while the old one is set
        aside, so the original disk is never the one removed)."""
        if os.path.isdir(self._resize_dir(uuid)):
            self.driver.destroy(uuid)
            if os.path.isdir(self.driver.instance_dir(uuid)):
                shutil.rmtree(self.driver.instance_dir(uuid))

    def _restore_source(self, uuid, extra):
        if os.path.isdir(self._resize_dir(uuid)) and \
                not os.path.exists(self.driver.instance_dir(uuid)):
            os.rename(self._resize_dir(uuid), self.driver.instance_dir(uuid))
        view = extra.get("instance") or {}
        dom = self.driver.lookup(uuid)
        if dom is None and extra.get("old_xml"):
            dom = self.driver.define_xml(extra["old_xml"])
        if dom is not None and extra.get("was_running", True):
            vguest.start(dom)
        values = {"state": states.ACTIVE if extra.get("was_running", True)
                  else states.STOPPED, "task_state": None,
                  "power_state": vguest.power_state(dom), "host": self.host,
                  "flavor": view.get("flavor")}
        values = {k: v for k, v in values.items() if v is not None or k == "task_state"}
        try:
            self.db.instance_update(uuid, **values)
        except exception.InstanceNotFound:
            self.db.instance_create(dict(
                uuid=uuid, name=view.get("name", ""), image=view.get("image", {}),
                networks=view.get("networks", []), meta=view.get("metadata", {}),
                disk_path=self.driver.disk_path(uuid), **values))

    # ------------------------------------------------------ destination side
    def _validated_instance(self, instance):
        """The instance a peer sends is validated like a scheduler's spawn payload
        (networks against ``allowed_bridges`` included)."""
        return schema.validate_instance(
            dict(instance, metadata=instance.get("metadata") or {}),
            self.conf.network.allowed_bridges)

    def prep_resize(self, ctx, instance, migration, disk_info):
        inst = self._validated_instance(instance)
        uuid = inst["uuid"]
        mid = schema.migration_id(migration.get("id"))
        source = schema.host_name(migration.get("source"))
        flavor = schema.validate_flavor(migration.get("new_flavor"))
        old_flavor = schema.validate_flavor(migration.get("old_flavor"))
        same = source == self.host
        deadline = migration.get("pre_deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            raise exception.MigrationError(
                reason="resize preparation for %s arrived after its deadline" % mid)
        with instance_lock(uuid):
            status = self.m.get_host_status(ctx)
            if not status.get("libvirt_connected"):
                raise exception.MigrationError(reason="no libvirt connection on %s"
                                               % self.host)
            need = flavor["memory_mb"] - (old_flavor["memory_mb"] if same else 0)
            if status.get("free_ram_mb", 0) < need:
                raise exception.MigrationError(reason="%s has %s MiB free, needs %s" % (
                    self.host, status.get("free_ram_mb"), need))
            if not same:
                try:
                    existing = self.db.instance_get(uuid)
                    raise exception.MigrationError(
                        reason="instance %s already here (%s)" % (uuid, existing["state"]))
                except exception.InstanceNotFound:
                    pass
                if os.path.exists(self.driver.instance_dir(uuid)) or \
                        self.driver.lookup(uuid) is not None:
                    raise exception.MigrationError(
                        reason="instance %s already has a directory or domain here"
                        % uuid)
                if self.db.migration_create({
                        "id": mid, "instance_uuid": uuid, "kind": "resize",
                        "source": source, "dest": self.host,
                        "status": S.PREPARING.value, "step": "preparing",
                        "progress": 0, "data_total": 0, "data_processed": 0,
                        "data_remaining": 0, "old_flavor": old_flavor,
                        "new_flavor": flavor, "started_at": utcnow(),
                        "extra": {"role": "dest", "instance": inst}}) is None:
                    raise exception.MigrationError(reason="migration %s already has a "
                                                   "record here" % mid)
            try:
                base_image.ensure(self.driver, self.cache, inst["image"], source,
                                  disk_info)
                if not same:
                    self.driver.make_instance_dir(uuid)
            except Exception:
                if not same:
                    self._cleanup_dest(uuid, mid)
                raise
            return {"prepared": True, "base_digest": self.cache.digest(inst["image"]["id"])}

    def finish_resize(self, ctx, instance, migration, disk_info):
        inst = self._validated_instance(instance)
        uuid = inst["uuid"]
        mid = schema.migration_id(migration.get("id"))
        flavor = inst["flavor"]
        with instance_lock(uuid):
            mig = self.db.migration_get(mid)
            if mig["instance_uuid"] != uuid or mig["dest"] != self.host:
                raise exception.MigrationError(reason="migration %s is not a resize of "
                                               "%s to %s" % (mid, uuid, self.host))
            same = self._same_host(mig)
            if not same:
                self._set(mid, S.FINISHING)
            disk = self.driver.disk_path(uuid)
            if not os.path.exists(disk):
                raise exception.MigrationError(reason="overlay did not arrive at %s"
                                               % disk)
            got = _sha256(disk)
            if got != disk_info.get("overlay_sha256"):
                raise exception.MigrationError(
                    reason="overlay digest %s differs from the source's %s"
                    % (got, disk_info.get("overlay_sha256")))
            expected_base = self.cache.base_path(inst["image"]["id"])
            # The overlay came from a peer: inspected in Python (data file, backing
            # file outside _base, unknown features, encryption) before qemu-img
            # ever opens it; refused, it is removed at once.
            try:
                inspect.inspect_overlay(disk, os.path.dirname(expected_base),
                                        what="resize overlay of %s" % uuid)
            except exception.ImageUnacceptable as e:
                os.unlink(disk)
                raise exception.MigrationError(reason="overlay from %s refused: %s" % (
                    mig["source"], e.kwargs.get("reason", e)))
            with self.cache.using(inst["image"]) as base:
                # backing file and format from the verified base, never the
                # peer's header (rebase -u does not open the old backing file)
                qemu_img.rebase_unsafe(disk, expected_base, base.disk_format)
                info = qemu_img.info(disk, "qcow2")
                new_size = max(flavor["root_gb"] * GiB, info["virtual-size"])
                if new_size > info["virtual-size"]:
                    qemu_img.resize(disk, new_size, "qcow2")
                backing_format = base.disk_format
            # the chain is verified before the guest ever starts on it
            problems = disk_chain.chain_problems(
                disk, expected_base, backing_format, new_size,
                base_digest=self.cache.digest(inst["image"]["id"]),
                expected_digest=disk_info.get("base_digest"))
            if problems:
                raise exception.BackingChainInvalid(path=disk, reason="; ".join(problems))
            self.m.configdrive.at_destination(  # issue 13: the config drive travels
                inst, mig["source"], self._resize_dir(uuid),
                source_has=disk_info.get("config_drive"))
            self._crash_point("dest:before-start")
            dom = self.driver.define_and_start(inst)
            self._crash_point("dest:after-start")
            values = {"state": states.RESIZE_VERIFY, "task_state": None,
                      "power_state": vguest.power_state(dom), "flavor": flavor,
                      "disk_path": disk, "base_path": expected_base, "fault": None}
            if same:
                self.db.instance_update(uuid, **values)
            else:
                self.db.instance_create(dict(
                    uuid=uuid, name=inst["name"], host=self.host, image=inst["image"],
                    networks=inst["networks"], meta=inst["metadata"], **values))
            self._set(mid, S.VERIFY_RESIZE, progress=100, finished_at=utcnow())
            return {"state": S.VERIFY_RESIZE.value}

    def resize_rollback_at_dest(self, ctx, uuid, mid):
        """Remove what this destination made for ``mid`` -- only while the resize
        is still being prepared or finished.  A finished one is kept (and said so:
        the source keeps the result); a confirmed or reverted one is refused; for an
        unknown id a failed record is left, so a late preparation is refused."""
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        with instance_lock(uuid):
            try:
                mig = self.db.migration_get(mid)
            except exception.MigrationNotFound:
                self.db.migration_create({
                    "id": mid, "instance_uuid": uuid, "kind": "resize",
                    "source": "", "dest": self.host, "status": S.FAILED.value,
                    "step": "rolled-back-before-prepare", "finished_at": utcnow(),
                    "extra": {"role": "dest"}})
                return {"state": "nothing-here"}
            if mig["instance_uuid"] != uuid or mig["dest"] != self.host or \
                    self._same_host(mig):
                raise exception.PeerRefused(method="resize_rollback_at_dest",
                                            reason="migration %s is not a resize of %s "
                                            "to %s" % (mid, uuid, self.host))
            if mig["status"] == S.VERIFY_RESIZE.value:
                return {"state": S.VERIFY_RESIZE.value}
            if mig["status"] == S.FAILED.value:
                return {"state": "rolled-back"}
            if mig["status"] not in (S.PREPARING.value, S.FINISHING.value):
                raise exception.PeerRefused(method="resize_rollback_at_dest",
                                            reason="migration %s is %s here"
                                            % (mid, mig["status"]))
            self._cleanup_dest(uuid, mid)
            return {"state": "rolled-back"}

    def _cleanup_dest(self, uuid, mid):
        """Destination of a cross-host resize that did not finish: remove the
        domain, the instance dir and the records (never the base)."""
        self._step(mid, "rolling-back-at-dest")
        try:
            self.driver.destroy(uuid)
        except Exception:
            LOG.exception("destroy %s during resize rollback", uuid)
        self.driver.remove_instance_dir(uuid)
        self.db.instance_destroy(uuid)
        self._set(mid, S.FAILED, step="rolled-back-at-dest", finished_at=utcnow())

    # ------------------------------------------------------- confirm / revert
    def _begin(self, uuid, mid, to, action):
        """verify-resize -> confirming | reverting, on the destination, as a CAS:
        returns False for a duplicate of the same request (nothing to do)."""
        uuid, mid, mig = self._own_migration(uuid, mid, "dest")
        done = S.CONFIRMED if to == S.CONFIRMING else S.REVERTED
        if mig["status"] in (to.value, done.value):
            LOG.info("%s of %s: already %s; ignored", action, mid, mig["status"])
            return False
        try:
            self._set(mid, to)
        except exception.InvalidTransition:
            raise exception.InstanceInvalidState(
                uuid=uuid, state=mig["status"], action=action,
                needed="a resize in verify-resize (not %s)"
                % self.db.migration_get(mid)["status"])
        return True

    def _on_thread_error(self, ctx, uuid, mid, action):
        def handler(exc):
            self.db.migration_update(mid, error="%s failed: %s" % (action, _short(exc)))
            self.notifier.instance(ctx, {"uuid": uuid, "host": self.host,
                                         "state": states.ERROR}, action, "error",
                                   fault=_short(exc), migration_id=mid)
        return handler

    def _start_finisher(self, ctx, uuid, mid, fn, action):
        if mid in self._busy:
            return
        self._busy.add(mid)

        def run():
            try:
                fn(ctx, uuid, mid)
            finally:
                self._busy.discard(mid)
        background.start("%s-%s" % (action, mid), run,
                         on_error=self._on_thread_error(ctx, uuid, mid, action))

    def confirm_resize(self, ctx, uuid, mid):
        with instance_lock(schema.uuid_of(uuid)):
            if not self._begin(uuid, mid, S.CONFIRMING, "confirm_resize"):
                return
        self._start_finisher(ctx, uuid, mid, self._do_confirm, "resize_confirm")

    def _do_confirm(self, ctx, uuid, mid):
        context.adopt(ctx)
        with instance_lock(uuid):
            mig = self.db.migration_get(mid)
            if mig["status"] != S.CONFIRMING.value:
                return
            self._crash_point("dest:during-confirm")
            self._call_done_if(S.CONFIRMED, mig["source"], "confirm_resize_at_source",
                               uuid, mid)
            inst = self.db.instance_get(uuid)
            running = inst["power_state"] == states.POWER_RUNNING
            inst = self.db.instance_update(uuid, state=states.ACTIVE if running
                                           else states.STOPPED, task_state=None)
            self._set(mid, S.CONFIRMED, finished_at=utcnow())
        self.notifier.instance(ctx, inst, "resize_confirm", "end", migration_id=mid)

    def confirm_resize_at_source(self, ctx, uuid, mid):
        uuid, mid, mig = self._own_migration(uuid, mid, "source")
        with instance_lock(uuid):
            mig = self.db.migration_get(mid)
            if self._same_host(mig):
                if mig["status"] != S.CONFIRMING.value:
                    raise exception.MigrationError(reason="resize %s is %s"
                                                   % (mid, mig["status"]))
            else:
                if mig["status"] == S.CONFIRMED.value:
                    return {"confirmed": True}
                if mig["status"] == S.VERIFY_RESIZE.value:
                    self._set(mid, S.CONFIRMING)
                elif mig["status"] != S.CONFIRMING.value:
                    raise exception.MigrationError(reason="resize %s is %s here"
                                                   % (mid, mig["status"]))
                # Our set-aside copy is the last one but for the destination's:
                # it goes only when the destination's libvirtd has the guest.
                there = self._peer_state(mig["dest"], uuid)
                if there is None:
                    raise exception.MigrationError(
                        reason="%s has no domain %s: the set-aside copy on %s is kept"
                        % (mig["dest"], uuid, self.host))
            self._crash_point("source:during-confirm")
            path = self._resize_dir(uuid)
            if os.path.isdir(path):
                shutil.rmtree(path)
            if not self._same_host(mig):
                self._set(mid, S.CONFIRMED, finished_at=utcnow())
            return {"confirmed": True}

    def _peer_state(self, host, uuid):
        try:
            return self.driver.peer_domain_state(host, uuid)
        except exception.HypervisorUnavailable as e:
            raise exception.MigrationError(reason="cannot ask the libvirtd of %s what "
                                           "it runs: %s" % (host, _short(e)))

    def revert_resize(self, ctx, uuid, mid):
        with instance_lock(schema.uuid_of(uuid)):
            if not self._begin(uuid, mid, S.REVERTING, "revert_resize"):
                return
            self.db.instance_update(schema.uuid_of(uuid), task_state=RESIZE_TASK)
        self._start_finisher(ctx, uuid, mid, self._do_revert, "resize_revert")

    def _do_revert(self, ctx, uuid, mid):
        context.adopt(ctx)
        with instance_lock(uuid):
            mig = self.db.migration_get(mid)
            if mig["status"] != S.REVERTING.value:
                return
            same = self._same_host(mig)
            # the destination's copy goes first: never two running guests
            self._step(mid, "removing-destination-copy")
            self.driver.destroy(uuid)
            if same:
                self._undo_same_host_dest(uuid)
            else:
                self.driver.remove_instance_dir(uuid)
                self.db.instance_destroy(uuid)
            self._crash_point("dest:during-revert")
            self._step(mid, "restoring-source")
            self._call_done_if(S.REVERTED, mig["source"], "finish_revert_resize", uuid,
                               mid)
            self._set(mid, S.REVERTED, finished_at=utcnow())
        self.notifier.instance(ctx, {"uuid": uuid, "host": mig["source"],
                                     "state": states.ACTIVE}, "resize_revert", "end",
                               migration_id=mid)

    def finish_revert_resize(self, ctx, uuid, mid):
        uuid, mid, mig = self._own_migration(uuid, mid, "source")
        with instance_lock(uuid):
            mig = self.db.migration_get(mid)
            if self._same_host(mig):
                if mig["status"] != S.REVERTING.value:
                    raise exception.MigrationError(reason="resize %s is %s"
                                                   % (mid, mig["status"]))
            else:
                if mig["status"] == S.REVERTED.value:
                    return {"reverted": True}
                # never two running copies: the destination's must be gone or off
                there = self._peer_state(mig["dest"], uuid)
                if there not in (None, states.POWER_SHUTDOWN):
                    raise exception.MigrationError(
                        reason="%s still runs %s (%s): the source copy is not started"
                        % (mig["dest"], uuid, there))
                if mig["status"] == S.VERIFY_RESIZE.value:
                    self._set(mid, S.REVERTING)
                elif mig["status"] != S.REVERTING.value:
                    raise exception.MigrationError(reason="resize %s is %s here"
                                                   % (mid, mig["status"]))
            self._crash_point("source:during-revert")
            self._restore_source(uuid, mig["extra"] or {})
            if not self._same_host(mig):
                self._set(mid, S.REVERTED, finished_at=utcnow())
            return {"reverted": True}

    def confirm_before_delete(self, ctx, uuid):
        """Delete of an instance in RESIZE_VERIFY: confirm its resize first (the
        source's set-aside copy goes too), in this thread."""
        for mig in self.db.migration_get_all(instance_uuid=uuid):
            if mig["kind"] != "resize" or mig["dest"] != self.host:
                continue
            if mig["status"] == S.VERIFY_RESIZE.value:
                with instance_lock(uuid):
                    self._begin(uuid, mig["id"], S.CONFIRMING, "delete")
            if mig["status"] in (S.VERIFY_RESIZE.value, S.CONFIRMING.value):
                self._do_confirm(ctx, uuid, mig["id"])

    # ------------------------------------------------------------ auto-confirm
    def auto_confirm(self):
        """Confirm resizes left in verify-resize longer than the window; resume
        confirms and reverts whose thread is gone (a failed peer call)."""
        window = self.conf.migration.resize_confirm_window
        now = utcnow()
        for mig in self.db.migration_get_all(statuses=(S.VERIFY_RESIZE.value,
                                                       S.CONFIRMING.value,
                                                       S.REVERTING.value)):
            if mig["kind"] != "resize" or mig["dest"] != self.host or \
                    mig["id"] in self._busy:
                continue
            ctx = context.new_context()
            uuid, mid = mig["instance_uuid"], mig["id"]
            try:
                if mig["status"] == S.VERIFY_RESIZE.value:
                    if window and mig["finished_at"] and \
                            (now - mig["finished_at"]).total_seconds() > window:
                        LOG.info("auto-confirming resize %s after %ds", mid, window)
                        self.confirm_resize(ctx, uuid, mid)
                elif mig["status"] == S.CONFIRMING.value:
                    self._start_finisher(ctx, uuid, mid, self._do_confirm,
                                         "resize_confirm")
                else:
                    self._start_finisher(ctx, uuid, mid, self._do_revert,
                                         "resize_revert")
            except exception.ComputeAgentError as e:
                LOG.info("auto-confirm of %s: %s", mid, e)
            except Exception:
                LOG.exception("auto-confirm of %s", mid)

    # ---------------------------------------------------------------- recovery
    def recover(self):
        """At start-up: finish or roll back every resize this host was part of."""
        for mig in self.db.migration_get_all():
            if mig["kind"] != "resize" or mig["status"] in TERMINAL:
                continue
            ctx = context.new_context()
            background.start("recover-%s" % mig["id"], self._recover_one, ctx, mig)

    def _recover_one(self, ctx, mig):
        context.adopt(ctx)
        mid, uuid, status = mig["id"], mig["instance_uuid"], mig["status"]
        role = (mig["extra"] or {}).get("role")
        same = self._same_host(mig)
        LOG.warning("resize %s was %s (step %s) when the agent stopped", mid, status,
                    mig["step"])
        if status == S.VERIFY_RESIZE.value:
            return                                  # a waiting state
        if status == S.CONFIRMING.value:
            if same or role == "dest":
                self._start_finisher(ctx, uuid, mid, self._do_confirm, "resize_confirm")
            else:
                self.confirm_resize_at_source(ctx, uuid, mid)
        elif status == S.REVERTING.value:
            if same or role == "dest":
                self._start_finisher(ctx, uuid, mid, self._do_revert, "resize_revert")
            else:
                self.finish_revert_resize(ctx, uuid, mid)
        elif role == "source":
            with instance_lock(uuid):
                self._rollback_source(ctx, mid, "agent restarted at step %s; "
                                      "rolled back" % mig["step"])
        elif role == "dest" and (status == S.FINISHING.value or
                                 mig["step"] == "rolling-back-at-dest"):
            with instance_lock(uuid):
                self._cleanup_dest(uuid, mid)
        # a destination still preparing: the source drives (it finishes or rolls
        # back, and its own recovery covers a crash there)

    def in_flight_uuids(self):
        return {m["instance_uuid"] for m in self.db.migration_get_all()
                if m["kind"] == "resize" and m["status"] not in TERMINAL}
