"""Resize and cold migration, with confirm and revert, that survive a crash at any
step (no ssh trust between hypervisors, no orphans).

Every step is written to the migration record *before* it is taken, so a
restarted agent knows where it stood (``recover``). Until the destination reports
RESIZE_VERIFY the source decides: on any doubt it rolls back (destination cleaned
first, then the source restores its set-aside disk and starts the guest), so the
guest never runs on two hosts. After RESIZE_VERIFY the destination owns the
instance and drives confirm/revert.

Steps (migration ``step``) in order:
  queued -> preparing -> powering-off -> moving-aside -> copying -> finishing ->
  verify-resize -> confirming -> confirmed | reverting -> reverted
and ``rolling-back`` -> failed.
Files: the source keeps ``<uuid>_resize/`` (its overlay, untouched) until confirm;
the destination receives only the overlay into ``<uuid>/disk`` through libvirt
(storage volume upload into a pool on its instance dir), verified by sha256.
"""
import hashlib
import logging
import os
import shutil
import signal
import threading
import time

import libvirt

from computeagent import context
from computeagent import exception
from computeagent import states
from computeagent.db.models import utcnow
from computeagent.images import chain as disk_chain
from computeagent.images import qemu_img
from computeagent.rpc import schema
from computeagent.virt import guest as vguest
from computeagent.virt import storage

LOG = logging.getLogger(__name__)
GiB = 1024 ** 3

ACTIVE_STATUSES = ("queued", "preparing", "migrating", "finishing", "verify-resize")
TERMINAL = ("confirmed", "reverted", "failed")
RESIZE_TASK = states.RESIZE_TASK


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(e):
    return str(e).splitlines()[0][:500] if str(e) else e.__class__.__name__


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

    # ----------------------------------------------------------- test hooks
    def _crash_point(self, name):
        """Tests only: ``[debug] crash_at`` names points where the agent kills
        itself with SIGKILL, to prove recovery."""
        if name in self.conf.debug.crash_at:
            LOG.error("CRASH POINT %s: killing myself with SIGKILL", name)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(10)

    # ---------------------------------------------------------------- helpers
    def _upd(self, mid, **values):
        return self.db.migration_update(mid, **values)

    def _step(self, mid, step, status=None):
        values = {"step": step}
        if status:
            values["status"] = status
        LOG.info("resize %s: step %s", mid, step)
        return self._upd(mid, **values)

    def _same_host(self, mig):
        return mig["source"] == mig["dest"]

    def _resize_dir(self, uuid):
        return self.driver.instance_dir(uuid) + "_resize"

    def _call(self, host, method, *args, retry_for=0, **kwargs):
        """Agent-to-agent call; on this host a direct call. With ``retry_for`` the
        call is retried (the peer may be restarting) for that many seconds."""
        timeout = kwargs.pop("timeout", None) or self.conf.rpc_call_timeout
        if host == self.host:
            return getattr(self, method)(context.new_context(), *args, **kwargs)
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return getattr(self.peer, method)(context.to_rpc(), host, *args,
                                                  timeout=timeout, **kwargs)
            except (exception.MigrationError, exception.InvalidInput,
                    exception.BackingChainInvalid):
                raise
            except Exception as e:
                if time.monotonic() >= deadline:
                    raise
                LOG.info("%s on %s failed (%s); retrying", method, host, _short(e))
                time.sleep(2)

    # ------------------------------------------------------------ source: cast
    def resize(self, ctx, uuid, dest, flavor, mid):
        uuid = schema.uuid_of(uuid)
        dest = schema.host_name(dest)
        mid = schema.migration_id(mid)
        flavor = schema.validate_flavor(flavor)
        try:
            existing = self.db.migration_get(mid)
            LOG.info("resize %s: duplicate of migration %s (%s); ignored", uuid, mid,
                     existing["status"])
            return
        except exception.MigrationNotFound:
            pass
        inst = self.m._get_own(uuid)
        if inst["state"] not in (states.ACTIVE, states.STOPPED) or \
                inst["task_state"] is not None:
            raise exception.InstanceInvalidState(
                uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                action="resize", needed="ACTIVE or STOPPED with no task")
        base = {"id": mid, "instance_uuid": uuid, "kind": "resize",
                "source": self.host, "dest": dest, "progress": 0, "data_total": 0,
                "data_processed": 0, "data_remaining": 0, "old_flavor": inst["flavor"],
                "new_flavor": flavor}
        if flavor["root_gb"] < inst["flavor"]["root_gb"]:
            reason = "shrinking the root disk from %d to %d GiB is refused" % (
                inst["flavor"]["root_gb"], flavor["root_gb"])
            self.db.migration_create(dict(base, status="failed", step="refused",
                                          error=reason, extra={}))
            raise exception.InvalidInput(reason=reason)
        view = {k: inst[k] for k in ("uuid", "name", "flavor", "image", "networks",
                                     "metadata")}
        was_running = inst["state"] == states.ACTIVE
        mig = self.db.migration_create(dict(
            base, status="queued", step="queued", started_at=utcnow(),
            extra={"role": "source", "instance": view, "was_running": was_running}))
        if mig is None:
            return
        self.db.instance_update(uuid, expected_task_state=[None],
                                state=states.MIGRATING, task_state=RESIZE_TASK)
        self.notifier.instance(ctx, inst, "resize", "start", migration_id=mid,
                               dest=dest)
        threading.Thread(target=self._run_safe, args=(ctx, uuid, mid),
                         name="resize-%s" % mid, daemon=True).start()

    def _run_safe(self, ctx, uuid, mid):
        context.adopt(ctx)
        try:
            self._run(ctx, uuid, mid)
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
        self._step(mid, "preparing", "preparing")
        dinfo = self.m.live.disk_info(view)
        extra["disk_info"] = dinfo
        self._upd(mid, extra=extra)
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
            self._upd(mid, extra=extra)
            self._call(dest, "prep_resize", view, mview, dinfo, timeout=timeout)
        except Exception as e:
            self._rollback_source(ctx, mid, "preparation on %s failed: %s"
                                  % (dest, _short(e)))
            return

        # 2. power off (ACPI with a timeout, then destroy); keep the old XML
        self._step(mid, "powering-off", "migrating")
        dom = self.driver.lookup(uuid)
        if dom is not None:
            extra["old_xml"] = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            self._upd(mid, extra=extra)
            vguest.shutdown(dom, self.conf.libvirt.shutdown_timeout)
        self._crash_point("source:after-power-off")

        # 3. set the source's files aside; the old domain definition is saved in
        #    the record, so undefine it (no domain for this uuid on two hosts)
        self._step(mid, "moving-aside")
        if os.path.isdir(self.driver.instance_dir(uuid)) and \
                not os.path.exists(self._resize_dir(uuid)):
            os.rename(self.driver.instance_dir(uuid), self._resize_dir(uuid))
        if dom is not None:
            vguest.undefine(dom)

        # 4. copy only the overlay, digest first
        self._step(mid, "copying")
        src = os.path.join(self._resize_dir(uuid), "disk")
        digest = _sha256(src)
        size = os.path.getsize(src)
        extra["overlay_sha256"] = digest
        extra["overlay_bytes"] = size
        self._upd(mid, extra=extra, data_total=size)
        if same:
            self.driver.make_instance_dir(uuid)
            shutil.copyfile(src, disk)
            self._crash_point("source:during-copy")
        else:
            self._upload(mid, dest, uuid, src)
        self._upd(mid, data_processed=size, progress=50)
        self._crash_point("source:after-copy")

        # 5. destination finishes: rebase if needed, grow, define, start, verify
        self._step(mid, "finishing", "finishing")
        new_view = dict(view, flavor=mig["new_flavor"])
        try:
            self._call(dest, "finish_resize", new_view, self._mig_view(mid),
                       dict(dinfo, overlay_sha256=digest),
                       timeout=self.conf.migration.resize_finish_timeout)
        except Exception as e:
            self._rollback_source(ctx, mid, "finishing on %s failed: %s"
                                  % (dest, _short(e)))
            return
        self._source_finished(ctx, mid)

    def _upload(self, mid, dest, uuid, src):
        uri = self.conf.libvirt.migration_uri_template % {"host": dest}
        sent = [0]

        def progress(n):
            sent[0] = n
            if n > 0:
                self._crash_point("source:during-copy")

        storage.upload(uri, self.driver.instance_dir(uuid), "disk", src,
                       progress_cb=progress)

    def _source_finished(self, ctx, mid):
        mig = self.db.migration_get(mid)
        uuid = mig["instance_uuid"]
        if not self._same_host(mig):
            self.db.instance_destroy(uuid)       # the destination owns it now
            self._upd(mid, status="verify-resize", step="verify-resize", progress=100)
        self.notifier.instance(ctx, {"uuid": uuid, "host": mig["dest"],
                                     "state": states.RESIZE_VERIFY},
                               "resize", "end", migration_id=mid)

    def _mig_view(self, mid):
        from computeagent.live_migration import migration_view
        mig = self.db.migration_get(mid)
        v = migration_view(mig)
        v.pop("extra", None)
        v["old_flavor"] = mig["old_flavor"]
        v["new_flavor"] = mig["new_flavor"]
        return v

    def _source_migration(self, uuid, mid):
        """Validated ids and the record of a resize this host is the source of."""
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        mig = self.db.migration_get(mid)
        if mig["source"] != self.host:
            raise exception.MigrationError(reason="%s is not the source of %s"
                                           % (self.host, mid))
        return uuid, mid, mig

    # ------------------------------------------------------- source: rollback
    def _rollback_source(self, ctx, mid, reason):
        """Undo on both sides, destination first; then restore and start the
        guest on the source. Idempotent: safe to run again after a crash."""
        mig = self._step(mid, "rolling-back")
        uuid = mig["instance_uuid"]
        extra = mig["extra"] or {}
        if not self._same_host(mig) and extra.get("prep_sent"):
            try:
                res = self._call(mig["dest"], "resize_rollback_at_dest", uuid, mid,
                                 retry_for=600)
            except Exception as e:
                LOG.error("resize %s: destination rollback failed: %s", mid, e)
                self._upd(mid, error="%s; destination rollback failed: %s"
                          % (reason, _short(e)))
                return
            if res.get("state") == "verify-resize":
                # The destination had finished before we lost track: keep it.
                LOG.info("resize %s: destination already finished", mid)
                self._source_finished(ctx, mid)
                return
        elif self._same_host(mig):
            self._undo_same_host_dest(uuid)
        self._restore_source(uuid, mid, extra)
        self._upd(mid, status="failed", step="rolled-back", error=reason[:4000],
                  finished_at=utcnow())
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

    def _restore_source(self, uuid, mid, extra):
        if os.path.isdir(self._resize_dir(uuid)) and \
                not os.path.exists(self.driver.instance_dir(uuid)):
            os.rename(self._resize_dir(uuid), self.driver.instance_dir(uuid))
        view = extra.get("instance") or {}
        dom = self.driver.lookup(uuid)
        if dom is None and extra.get("old_xml"):
            dom = vguest.define(self.driver.host.get_connection(), extra["old_xml"])
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
    def prep_resize(self, ctx, instance, migration, disk_info):
        uuid = schema.uuid_of(instance.get("uuid"))
        mid = schema.migration_id(migration.get("id"))
        flavor = schema.validate_flavor(migration.get("new_flavor"))
        same = migration.get("source") == self.host
        deadline = migration.get("pre_deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            raise exception.MigrationError(
                reason="resize preparation for %s arrived after its deadline" % mid)
        status = self.m.get_host_status(ctx)
        if not status.get("libvirt_connected"):
            raise exception.MigrationError(reason="no libvirt connection on %s"
                                           % self.host)
        need = flavor["memory_mb"] - (migration["old_flavor"]["memory_mb"] if same else 0)
        if status.get("free_ram_mb", 0) < need:
            raise exception.MigrationError(reason="%s has %s MiB free, needs %s" % (
                self.host, status.get("free_ram_mb"), need))
        image = instance["image"]
        if not same:
            if self.db.migration_create({
                    "id": mid, "instance_uuid": uuid, "kind": "resize",
                    "source": migration["source"], "dest": self.host,
                    "status": "preparing", "step": "preparing", "progress": 0,
                    "data_total": 0, "data_processed": 0, "data_remaining": 0,
                    "old_flavor": migration.get("old_flavor"), "new_flavor": flavor,
                    "started_at": utcnow(),
                    "extra": {"role": "dest", "instance": instance}}) is None:
                mig = self.db.migration_get(mid)
                if mig["status"] != "preparing":
                    raise exception.MigrationError(reason="migration %s is %s here"
                                                   % (mid, mig["status"]))
            try:
                existing = self.db.instance_get(uuid)
                raise exception.MigrationError(reason="instance %s already here (%s)"
                                               % (uuid, existing["state"]))
            except exception.InstanceNotFound:
                pass
        try:
            self.cache.ensure(image)
        except (exception.ImageDownloadFailed, exception.ImageUnacceptable) as e:
            LOG.info("image source failed (%s); pulling the base from %s", e,
                     migration["source"])
            self.m.live._pull_base_from(migration["source"], image, disk_info)
        digest = self.cache.digest(image["id"])
        if disk_info.get("base_digest") and digest != disk_info["base_digest"]:
            raise exception.MigrationError(reason="base digest %s differs from the "
                                           "source's %s" % (digest,
                                                            disk_info["base_digest"]))
        if not same:
            if os.path.exists(self.driver.instance_dir(uuid)):
                raise exception.MigrationError(reason="instance directory exists here")
            self.driver.make_instance_dir(uuid)
        return {"prepared": True, "base_digest": digest}

    def finish_resize(self, ctx, instance, migration, disk_info):
        uuid = schema.uuid_of(instance.get("uuid"))
        mid = schema.migration_id(migration.get("id"))
        flavor = schema.validate_flavor(instance.get("flavor"))
        same = migration.get("source") == self.host
        if not same:
            self._step(mid, "finishing", "finishing")
        disk = self.driver.disk_path(uuid)
        if not os.path.exists(disk):
            raise exception.MigrationError(reason="overlay did not arrive at %s" % disk)
        got = _sha256(disk)
        if got != disk_info.get("overlay_sha256"):
            raise exception.MigrationError(reason="overlay digest %s differs from the "
                                           "source's %s" % (got,
                                                            disk_info.get("overlay_sha256")))
        expected_base = self.cache.base_path(instance["image"]["id"])
        with self.cache.using(instance["image"]) as base:
            info = qemu_img.info(disk, "qcow2")
            backing = info.get("full-backing-filename") or info.get("backing-filename")
            if backing != expected_base:
                qemu_img.rebase_unsafe(disk, expected_base, base.disk_format)
            new_size = flavor["root_gb"] * GiB
            if new_size > info["virtual-size"]:
                qemu_img.resize(disk, new_size, "qcow2")
        view = dict(instance, flavor=flavor)
        self._crash_point("dest:before-start")
        dom = self.driver.define_and_start(view)
        self._crash_point("dest:after-start")
        problems = disk_chain.chain_problems(
            disk, expected_base, disk_info.get("backing_format"), new_size
            if new_size > info["virtual-size"] else info["virtual-size"],
            base_digest=self.cache.digest(instance["image"]["id"]),
            expected_digest=disk_info.get("base_digest"))
        if problems:
            vguest.destroy(dom)
            raise exception.BackingChainInvalid(path=disk, reason="; ".join(problems))
        values = {"state": states.RESIZE_VERIFY, "task_state": None,
                  "power_state": vguest.power_state(dom), "flavor": flavor,
                  "disk_path": disk, "base_path": expected_base, "fault": None}
        if same:
            self.db.instance_update(uuid, **values)
        else:
            self.db.instance_create(dict(
                uuid=uuid, name=instance["name"], host=self.host,
                image=instance["image"], networks=instance["networks"],
                meta=instance.get("metadata") or {}, **values))
        self._upd(mid, status="verify-resize", step="verify-resize", progress=100,
                  finished_at=utcnow())
        return {"state": "verify-resize"}

    def resize_rollback_at_dest(self, ctx, uuid, mid):
        """Remove what this destination made for ``mid`` unless it had already
        finished (then say so: the source keeps the result)."""
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        try:
            mig = self.db.migration_get(mid)
        except exception.MigrationNotFound:
            return {"state": "nothing-here"}
        if mig["dest"] != self.host or mig["source"] == self.host:
            return {"state": "nothing-here"}
        if mig["status"] == "verify-resize":
            return {"state": "verify-resize"}
        if mig["status"] in TERMINAL and mig["step"] == "rolled-back-at-dest":
            return {"state": "rolled-back"}
        self._cleanup_dest(uuid, mid)
        return {"state": "rolled-back"}

    def _cleanup_dest(self, uuid, mid):
        try:
            self.driver.destroy(uuid)
        except Exception:
            LOG.exception("destroy %s during resize rollback", uuid)
        self.driver.remove_instance_dir(uuid)
        self.db.instance_destroy(uuid)
        self._upd(mid, status="failed", step="rolled-back-at-dest",
                  finished_at=utcnow())

    # ------------------------------------------------------- confirm / revert
    def confirm_resize(self, ctx, uuid, mid):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        mig = self.db.migration_get(mid)
        if mig["status"] in ("confirmed",):
            return
        if mig["status"] != "verify-resize" or mig["dest"] != self.host:
            raise exception.InstanceInvalidState(
                uuid=uuid, state=mig["status"], action="confirm_resize",
                needed="verify-resize on the destination %s" % mig["dest"])
        self._step(mid, "confirming")
        threading.Thread(target=self._do_confirm, args=(ctx, uuid, mid),
                         daemon=True).start()

    def _do_confirm(self, ctx, uuid, mid):
        context.adopt(ctx)
        mig = self.db.migration_get(mid)
        self._crash_point("dest:during-confirm")
        try:
            self._call(mig["source"], "confirm_resize_at_source", uuid, mid,
                       retry_for=600)
        except Exception as e:
            LOG.error("confirm %s: source cleanup failed: %s", mid, e)
            self._upd(mid, error="source cleanup failed: %s" % _short(e))
            return
        inst = self.db.instance_get(uuid)
        running = inst["power_state"] == states.POWER_RUNNING
        inst = self.db.instance_update(uuid, state=states.ACTIVE if running
                                       else states.STOPPED, task_state=None)
        self._upd(mid, status="confirmed", step="confirmed", finished_at=utcnow())
        self.notifier.instance(ctx, inst, "resize_confirm", "end", migration_id=mid)

    def confirm_resize_at_source(self, ctx, uuid, mid):
        uuid, mid, mig = self._source_migration(uuid, mid)
        if not self._same_host(mig):
            self._step(mid, "confirming")
        self._crash_point("source:during-confirm")
        path = self._resize_dir(uuid)
        if os.path.isdir(path):
            shutil.rmtree(path)
        if not self._same_host(mig):
            self._upd(mid, status="confirmed", step="confirmed", finished_at=utcnow())
        return {"confirmed": True}

    def revert_resize(self, ctx, uuid, mid):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        mig = self.db.migration_get(mid)
        if mig["status"] == "reverted":
            return
        if mig["status"] != "verify-resize" or mig["dest"] != self.host:
            raise exception.InstanceInvalidState(
                uuid=uuid, state=mig["status"], action="revert_resize",
                needed="verify-resize on the destination %s" % mig["dest"])
        self._step(mid, "reverting")
        self.db.instance_update(uuid, task_state=RESIZE_TASK)
        threading.Thread(target=self._do_revert, args=(ctx, uuid, mid),
                         daemon=True).start()

    def _do_revert(self, ctx, uuid, mid):
        context.adopt(ctx)
        mig = self.db.migration_get(mid)
        same = self._same_host(mig)
        # the destination's copy goes first: never two running guests
        self.driver.destroy(uuid)
        if same:
            self._undo_same_host_dest(uuid)
        else:
            self.driver.remove_instance_dir(uuid)
            self.db.instance_destroy(uuid)
        self._crash_point("dest:during-revert")
        try:
            self._call(mig["source"], "finish_revert_resize", uuid, mid, retry_for=600)
        except Exception as e:
            LOG.error("revert %s: source restore failed: %s", mid, e)
            self._upd(mid, error="source restore failed: %s" % _short(e))
            return
        self._upd(mid, status="reverted", step="reverted", finished_at=utcnow())
        self.notifier.instance(ctx, {"uuid": uuid, "host": mig["source"],
                                     "state": states.ACTIVE}, "resize_revert", "end",
                               migration_id=mid)

    def finish_revert_resize(self, ctx, uuid, mid):
        uuid, mid, mig = self._source_migration(uuid, mid)
        if mig["status"] == "reverted":
            return {"reverted": True}
        if not self._same_host(mig):
            self._step(mid, "reverting")
        self._crash_point("source:during-revert")
        self._restore_source(uuid, mid, mig["extra"] or {})
        if not self._same_host(mig):
            self._upd(mid, status="reverted", step="reverted", finished_at=utcnow())
        return {"reverted": True}

    # ------------------------------------------------------------ auto-confirm
    def auto_confirm(self):
        window = self.conf.migration.resize_confirm_window
        if not window:
            return
        now = utcnow()
        for mig in self.db.migration_get_all(statuses=("verify-resize",)):
            if mig["kind"] != "resize" or mig["dest"] != self.host:
                continue
            if mig["finished_at"] and (now - mig["finished_at"]).total_seconds() > window:
                LOG.info("auto-confirming resize %s after %ds", mig["id"], window)
                try:
                    self.confirm_resize(context.new_context(), mig["instance_uuid"],
                                        mig["id"])
                except Exception:
                    LOG.exception("auto-confirm of %s", mig["id"])

    # ---------------------------------------------------------------- recovery
    def recover(self):
        """At start-up: finish or roll back every resize this host was part of."""
        for mig in self.db.migration_get_all():
            if mig["kind"] != "resize" or mig["status"] in TERMINAL:
                continue
            ctx = context.new_context()
            threading.Thread(target=self._recover_one, args=(ctx, mig),
                             name="recover-%s" % mig["id"], daemon=True).start()

    def _recover_one(self, ctx, mig):
        context.adopt(ctx)
        mid, uuid, step = mig["id"], mig["instance_uuid"], mig["step"]
        role = (mig["extra"] or {}).get("role")
        same = self._same_host(mig)
        LOG.warning("resize %s was at step %s when the agent stopped", mid, step)
        try:
            if step == "confirming":
                if same or role == "dest":
                    self._do_confirm(ctx, uuid, mid)
                else:
                    self.confirm_resize_at_source(ctx, uuid, mid)
            elif step == "reverting":
                if same or role == "dest":
                    self._do_revert(ctx, uuid, mid)
                else:
                    self.finish_revert_resize(ctx, uuid, mid)
            elif step == "verify-resize":
                return                                  # a waiting state
            elif role == "source":
                self._rollback_source(ctx, mid, "agent restarted at step %s; "
                                      "rolled back" % step)
            elif role == "dest" and step == "finishing":
                self._cleanup_dest(uuid, mid)
            # a destination before "finishing": the source drives (it finishes or
            # rolls back, and its own recovery covers a crash there)
        except Exception:
            LOG.exception("recovery of resize %s", mid)

    def in_flight_uuids(self):
        return {m["instance_uuid"] for m in self.db.migration_get_all()
                if m["kind"] == "resize" and m["status"] not in TERMINAL}
