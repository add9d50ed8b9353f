"""Live block migration without shared storage.

Source side (``live_migrate``): validate, record, queue (at most
``max_concurrent_live_migrations`` at once), ask the destination to prepare,
``migrateToURI3`` with NON_SHARED_INC while a monitor thread feeds progress into
the migration record, ask the destination to verify the backing chain, and only
then delete the source's files.

Destination side (``pre_live_migration``, ``post_live_migration_at_destination``,
``rollback_live_migration_at_destination``): ensure the base through the image
cache (or pull it from the source's libvirtd when the image source no longer
has it), compare its digest with the source's, pre-create the overlay with the
same backing file and virtual size; after the switch-over verify the chain; on
failure remove what it created, never the base.
"""
import datetime
import logging
import os
import tempfile
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
from computeagent.virt import migration as policy
from computeagent.virt import storage

LOG = logging.getLogger(__name__)

MONITOR_INTERVAL = 0.5


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
            "downtime_ms": m["downtime_ms"], "error": m["error"],
            "started_at": _iso(m["started_at"]), "finished_at": _iso(m["finished_at"]),
            "extra": m.get("extra") or {}}


class LiveMigrationFlows:
    def __init__(self, manager, peer_api):
        self.m = manager
        self.conf = manager.conf
        self.db = manager.db
        self.driver = manager.driver
        self.cache = manager.image_cache
        self.notifier = manager.notifier
        self.peer = peer_api          # ComputeAgentAPI for agent-to-agent calls
        self._slots = threading.BoundedSemaphore(
            self.conf.migration.max_concurrent_live_migrations)
        self._aborts = {}             # migration id -> threading.Event
        self._running = {}            # migration id -> virDomain while migrating

    # ------------------------------------------------------------------ source
    def live_migrate(self, ctx, uuid, dest, migration_id, block_migration=True):
        uuid = schema.uuid_of(uuid)
        dest = schema.host_name(dest)
        migration_id = schema.migration_id(migration_id)
        if not isinstance(block_migration, bool):
            raise exception.InvalidInput(reason="block_migration must be a boolean")
        try:
            existing = self.db.migration_get(migration_id)
            LOG.info("live_migrate %s: duplicate of migration %s (%s); ignored",
                     uuid, migration_id, existing["status"])
            return
        except exception.MigrationNotFound:
            pass
        inst = self.m._get_own(uuid)
        if dest == self.conf.host:
            raise exception.InvalidInput(reason="destination is this host")
        if not block_migration:
            raise exception.InvalidInput(
                reason="only block migration is supported (no shared storage)")
        if inst["state"] != states.ACTIVE or inst["task_state"] is not None:
            raise exception.InstanceInvalidState(
                uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                action="live_migrate", needed="ACTIVE with no task")
        mig = self.db.migration_create({
            "id": migration_id, "instance_uuid": uuid, "kind": "live",
            "source": self.conf.host, "dest": dest, "status": states.MIG_QUEUED,
            "progress": 0, "data_total": 0, "data_processed": 0, "data_remaining": 0,
            "extra": {}})
        if mig is None:
            return
        self.db.instance_update(uuid, expected_task_state=[None],
                                state=states.MIGRATING, task_state=states.MIGRATING_TASK)
        self._aborts[migration_id] = threading.Event()
        self.notifier.instance(ctx, inst, "live_migration", "start",
                               migration_id=migration_id, dest=dest)
        threading.Thread(target=self._run_safe, args=(ctx, uuid, migration_id),
                         name="migration-%s" % migration_id, daemon=True).start()

    def _run_safe(self, ctx, uuid, mid):
        context.adopt(ctx)
        try:
            self._run(ctx, uuid, mid)
        except Exception as e:
            LOG.exception("migration %s crashed", mid)
            self._fail(ctx, uuid, mid, "internal error: %s" % e)
        finally:
            self._aborts.pop(mid, None)

    def _upd(self, mid, **values):
        return self.db.migration_update(mid, **values)

    def _fail(self, ctx, uuid, mid, reason, status=states.MIG_FAILED, restore=True):
        LOG.warning("migration %s %s: %s", mid, status, reason)
        self._upd(mid, status=status, error=reason[:4000], finished_at=utcnow())
        if restore:
            try:
                inst = self.db.instance_update(
                    uuid, state=states.ACTIVE, task_state=None,
                    power_state=self.driver.power_state(uuid))
                self.notifier.instance(ctx, inst, "live_migration", "error",
                                       fault=reason, migration_id=mid)
            except exception.InstanceNotFound:
                pass

    def _run(self, ctx, uuid, mid):
        abort = self._aborts[mid]
        # queued: wait for a slot, abortable
        while not self._slots.acquire(timeout=0.2):
            if abort.is_set():
                self._fail(ctx, uuid, mid, "aborted while queued",
                           status=states.MIG_CANCELLED)
                return
        try:
            if abort.is_set():
                self._fail(ctx, uuid, mid, "aborted while queued",
                           status=states.MIG_CANCELLED)
                return
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
                "base_digest": self.cache.digest(image_id) if image_id else None}

    def _migrate(self, ctx, uuid, mid, abort):
        mig = self._upd(mid, status=states.MIG_PREPARING, started_at=utcnow(),
                        step="pre-live-migration")
        dest = mig["dest"]
        inst = self.db.instance_get(uuid)
        rpc_ctx = context.to_rpc(ctx)
        # 1. destination alive and has room
        try:
            status = self.peer.get_host_status(rpc_ctx, dest, timeout=10)
        except Exception as e:
            self._fail(ctx, uuid, mid, "destination %s not reachable: %s"
                       % (dest, _short(e)))
            return
        need_mb = inst["flavor"]["memory_mb"]
        if not status.get("libvirt_connected"):
            self._fail(ctx, uuid, mid, "destination %s has no libvirt connection" % dest)
            return
        if status.get("free_ram_mb", 0) < need_mb:
            self._fail(ctx, uuid, mid, "destination %s has %s MiB free, needs %s"
                       % (dest, status.get("free_ram_mb"), need_mb))
            return
        dinfo = self.disk_info(inst)
        if dinfo["backing_file"] is None:
            self._fail(ctx, uuid, mid, "source disk has no backing file")
            return
        # 2. destination prepares base + overlay
        view = {k: inst[k] for k in ("uuid", "name", "flavor", "image", "networks",
                                     "metadata")}
        timeout = self.conf.migration.pre_live_migration_timeout
        mview = migration_view(self.db.migration_get(mid))
        # oslo.messaging still delivers a call after the caller gave up: the
        # destination refuses a pre-migration request older than its deadline.
        mview["pre_deadline"] = time.time() + timeout
        try:
            prep = self.peer.pre_live_migration(rpc_ctx, dest, view, mview, dinfo,
                                                timeout=timeout)
        except Exception as e:
            self._rollback_dest(rpc_ctx, dest, uuid, mid)
            self._fail(ctx, uuid, mid, "pre-migration on %s failed: %s" % (dest, _short(e)))
            return
        if abort.is_set():
            self._rollback_dest(rpc_ctx, dest, uuid, mid)
            self._fail(ctx, uuid, mid, "aborted", status=states.MIG_CANCELLED)
            return
        # 3. migrate
        self._upd(mid, status=states.MIG_RUNNING, step="migrating",
                  extra={"dest_prepare": prep})
        dom = self.driver.require(uuid)
        mc = self.conf.migration
        xml = policy.retarget_xml(
            dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE),
            dest)
        params = policy.migration_params(xml, bandwidth_mib=mc.bandwidth_mib)
        flags = policy.migration_flags(True, mc.auto_converge, mc.tls)
        uri = self.conf.libvirt.migration_uri_template % {"host": dest}
        result = {}

        def do_migrate():
            try:
                dom.migrateToURI3(uri, params, flags)
                result["ok"] = True
            except libvirt.libvirtError as e:
                result["error"] = e

        # The source domain is undefined at the end (UNDEFINE_SOURCE), so its
        # completed statistics are only available from the job-completed event.
        completed = {}
        done = threading.Event()

        def on_job_completed(_conn, _dom, params, _opaque):
            completed.update(params)
            done.set()

        conn = self.driver.host.get_connection()
        try:
            cb_id = conn.domainEventRegisterAny(
                dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
        except libvirt.libvirtError:
            cb_id = None
        t = threading.Thread(target=do_migrate, name="migrate-%s" % mid, daemon=True)
        self._running[mid] = dom
        t0 = time.monotonic()
        t.start()
        last = {}
        aborted_reason = None
        while t.is_alive():
            t.join(MONITOR_INTERVAL)
            try:
                stats = dom.jobStats()
            except libvirt.libvirtError:
                stats = {}
            if stats.get("type", 0) not in (0, libvirt.VIR_DOMAIN_JOB_NONE):
                last = stats
                pct, total, processed, remaining = policy.progress(stats)
                self._upd(mid, progress=pct, data_total=total,
                          data_processed=processed, data_remaining=remaining,
                          **policy.byte_counters(stats))
                if aborted_reason is None and policy.should_abort(
                        time.monotonic() - t0, total, mc.completion_timeout_per_gib):
                    aborted_reason = "completion timeout (%ds for %d bytes)" % (
                        policy.completion_timeout(total, mc.completion_timeout_per_gib),
                        total)
            if abort.is_set() and aborted_reason is None:
                aborted_reason = "aborted by request"
            if aborted_reason and not result:
                try:
                    dom.abortJob()
                except libvirt.libvirtError as e:
                    LOG.info("abortJob: %s", e)
        self._running.pop(mid, None)
        if cb_id is not None:
            if "ok" in result:
                done.wait(2)
            try:
                conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass
        if "error" in result:
            self._rollback_dest(rpc_ctx, dest, uuid, mid)
            status = states.MIG_CANCELLED if aborted_reason == "aborted by request" \
                else states.MIG_FAILED
            self._fail(ctx, uuid, mid, aborted_reason or "migrateToURI3: %s"
                       % result["error"], status=status)
            return
        # 4. switch-over done: the guest runs on the destination now.
        self._upd(mid, status=states.MIG_POST, step="verify-at-destination",
                  progress=100, data_remaining=0)
        try:
            post = self.peer.post_live_migration_at_destination(
                rpc_ctx, dest, uuid, mid, dinfo,
                timeout=max(60, self.conf.rpc_call_timeout))
        except Exception as e:
            # The guest is on the destination but unverified: keep our files.
            reason = "post-migration at %s failed: %s" % (dest, _short(e))
            self._upd(mid, status=states.MIG_FAILED, error=reason[:4000],
                      finished_at=utcnow(), step="source-files-kept")
            self.db.instance_destroy(uuid)
            self.notifier.instance(ctx, {"uuid": uuid, "host": dest,
                                         "state": states.ERROR},
                                   "live_migration", "error", fault=reason,
                                   migration_id=mid, source_files_kept=True)
            return
        # Source's completed stats (disk and memory bytes, downtime) when the event
        # came; else the destination's (downtime, totals), else the last poll.
        stats = dict(last)
        stats.update(post.get("job_stats") or {})
        stats.update(completed)
        _pct, total, processed, _rem = policy.progress(stats) if stats else (0, 0, 0, 0)
        values = {"status": states.MIG_COMPLETED, "finished_at": utcnow(),
                  "step": "source-cleaned", "progress": 100, "data_remaining": 0}
        if stats.get("downtime") is not None:
            values["downtime_ms"] = int(stats["downtime"])
        if total:
            values["data_total"], values["data_processed"] = total, processed
            values.update({k: v for k, v in policy.byte_counters(stats).items() if v})
        # 5. only now delete what the source had
        self.db.instance_destroy(uuid)
        self.driver.remove_instance_dir(uuid)
        self._upd(mid, **values)
        self.notifier.instance(ctx, {"uuid": uuid, "host": dest, "state": states.ACTIVE},
                               "live_migration", "end", migration_id=mid,
                               downtime_ms=values.get("downtime_ms"))
        LOG.info("migration %s of %s to %s completed", mid, uuid, dest)

    def _rollback_dest(self, rpc_ctx, dest, uuid, mid):
        try:
            self.peer.rollback_live_migration_at_destination(rpc_ctx, dest, uuid, mid)
        except Exception as e:
            LOG.warning("rollback at %s of %s: %s", dest, mid, _short(e))

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
        ev.set()
        dom = self._running.get(mid)
        if dom is not None:
            try:
                dom.abortJob()
            except libvirt.libvirtError as e:
                LOG.info("abortJob: %s", e)

    # ------------------------------------------------------------- destination
    def pre_live_migration(self, ctx, instance, migration, disk_info):
        uuid = schema.uuid_of(instance.get("uuid"))
        mid = schema.migration_id(migration.get("id"))
        inst = schema.validate_instance(dict(instance, metadata=instance.get("metadata")
                                             or {}),
                                        self.conf.network.allowed_bridges)
        path = self.driver.disk_path(uuid)
        if disk_info.get("path") != path:
            raise exception.MigrationError(
                reason="source disk path %r differs from this host's %s"
                % (disk_info.get("path"), path))
        if disk_info.get("format") != "qcow2" or \
                disk_info.get("backing_format") not in ("raw", "qcow2"):
            raise exception.MigrationError(reason="unsupported disk formats %r/%r" % (
                disk_info.get("format"), disk_info.get("backing_format")))
        vsize = disk_info.get("virtual_size")
        if not isinstance(vsize, int) or vsize <= 0:
            raise exception.MigrationError(reason="bad virtual size %r" % (vsize,))
        expected_base = self.cache.base_path(inst["image"]["id"])
        if disk_info.get("backing_file") != expected_base:
            raise exception.MigrationError(
                reason="source backing file %r is not the cache path %s"
                % (disk_info.get("backing_file"), expected_base))
        try:
            existing = self.db.instance_get(uuid)
        except exception.InstanceNotFound:
            existing = None
        if existing is not None:
            raise exception.MigrationError(
                reason="instance %s already has a record here (%s)"
                % (uuid, existing["state"]))
        if self.driver.lookup(uuid) is not None:
            raise exception.MigrationError(reason="a domain %s already exists here" % uuid)
        if os.path.exists(self.driver.instance_dir(uuid)):
            raise exception.MigrationError(
                reason="instance directory %s already exists here"
                % self.driver.instance_dir(uuid))
        deadline = migration.get("pre_deadline")
        if isinstance(deadline, (int, float)) and time.time() > deadline:
            raise exception.MigrationError(
                reason="pre-migration request for %s arrived after its deadline" % mid)
        source = migration.get("source")
        self.db.migration_create({
            "id": mid, "instance_uuid": uuid, "kind": "live", "source": source,
            "dest": self.conf.host, "status": states.MIG_PREPARING, "progress": 0,
            "data_total": 0, "data_processed": 0, "data_remaining": 0,
            "started_at": utcnow(),
            "extra": {"role": "destination", "disk_info": disk_info}})
        self.db.instance_create({
            "uuid": uuid, "name": inst["name"], "host": self.conf.host,
            "state": states.MIGRATING, "task_state": states.MIGRATING_TASK,
            "power_state": states.POWER_NOSTATE, "flavor": inst["flavor"],
            "image": inst["image"], "networks": inst["networks"],
            "meta": inst["metadata"], "disk_path": path, "base_path": expected_base,
            "request_id": ctx.request_id})
        fetched_from = "cache"
        try:
            had = os.path.exists(expected_base)
            try:
                self.cache.ensure(inst["image"])
                fetched_from = "cache" if had else "image-source"
            except (exception.ImageDownloadFailed, exception.ImageUnacceptable) as e:
                LOG.info("image source failed (%s); pulling the base from %s", e, source)
                self._pull_base_from(source, inst["image"], disk_info)
                fetched_from = "source-host"
            with self.cache.using(inst["image"]) as base:
                digest = base.digest
                if disk_info.get("base_digest") and digest != disk_info["base_digest"]:
                    raise exception.MigrationError(
                        reason="base digest %s here differs from the source's %s"
                        % (digest, disk_info["base_digest"]))
                self.driver.make_instance_dir(uuid)
                if "flat_overlay" in self.conf.debug.fault_injection:
                    # Test-only: reproduce the 2011 bug (overlay without backing).
                    LOG.error("FAULT INJECTION: pre-creating %s without backing file",
                              path)
                    qemu_img.create_flat(path, vsize)
                else:
                    qemu_img.create_overlay(path, expected_base,
                                            disk_info["backing_format"], vsize)
        except Exception:
            self._cleanup_dest(uuid)
            self.db.migration_update(mid, status=states.MIG_FAILED, finished_at=utcnow())
            raise
        self.db.migration_update(mid, status=states.MIG_RUNNING, step="awaiting-data")
        return {"disk_path": path, "base_path": expected_base, "base_digest": digest,
                "base_from": fetched_from}

    def _pull_base_from(self, source, image, disk_info):
        uri = self.conf.libvirt.migration_uri_template % {"host": source}
        base_dir = os.path.dirname(self.cache.base_path(image["id"]))
        name = os.path.basename(disk_info["backing_file"])
        os.makedirs(base_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".%s.part-peer-" % name, dir=base_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                storage.download(uri, base_dir, name, f)
                f.flush()
                os.fsync(f.fileno())
            return self.cache.import_base(image["id"], tmp, disk_info["base_digest"],
                                          image["disk_format"])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _cleanup_dest(self, uuid):
        """Remove what the destination created: domain, instance dir, record.
        Never the base."""
        try:
            self.driver.destroy(uuid)
        except Exception:
            LOG.exception("destroying %s during rollback", uuid)
        self.driver.remove_instance_dir(uuid)
        self.db.instance_destroy(uuid)

    def post_live_migration_at_destination(self, ctx, uuid, mid, disk_info):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        inst = self.db.instance_get(uuid)
        expected_base = self.cache.base_path(inst["image"]["id"])
        problems = disk_chain.chain_problems(
            self.driver.disk_path(uuid), expected_base, disk_info.get("backing_format"),
            disk_info.get("virtual_size"),
            base_digest=self.cache.digest(inst["image"]["id"]),
            expected_digest=disk_info.get("base_digest"))
        dom = self.driver.lookup(uuid)
        stats = {}
        if dom is not None:
            try:
                stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                stats = {}
        if problems:
            fault = "backing chain check failed after live migration: " + "; ".join(
                problems)
            inst = self.db.instance_update(uuid, state=states.ERROR, task_state=None,
                                           fault=fault,
                                           power_state=vguest.power_state(dom))
            self.db.migration_update(mid, status=states.MIG_FAILED, error=fault,
                                     finished_at=utcnow())
            self.notifier.instance(ctx, inst, "live_migration", "chain_error",
                                   fault=fault, migration_id=mid, problems=problems)
            raise exception.BackingChainInvalid(path=self.driver.disk_path(uuid),
                                                reason="; ".join(problems))
        self.db.instance_update(uuid, state=states.ACTIVE, task_state=None, fault=None,
                                power_state=vguest.power_state(dom),
                                disk_path=self.driver.disk_path(uuid),
                                base_path=expected_base)
        self.db.migration_update(mid, status=states.MIG_COMPLETED, finished_at=utcnow(),
                                 progress=100, step="verified")
        return {"verified": True, "job_stats": {k: v for k, v in stats.items()
                                                if isinstance(v, (int, float))}}

    def rollback_live_migration_at_destination(self, ctx, uuid, mid):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        try:
            mig = self.db.migration_get(mid)
        except exception.MigrationNotFound:
            return {"rolled_back": False}     # pre-migration never got this far
        if mig["dest"] != self.conf.host or mig["instance_uuid"] != uuid or \
                mig["status"] in states.MIG_TERMINAL:
            return {"rolled_back": False}
        try:
            inst = self.db.instance_get(uuid)
        except exception.InstanceNotFound:
            inst = None
        if inst is not None and inst["state"] != states.MIGRATING:
            LOG.warning("rollback of %s refused: instance is %s here", mid, inst["state"])
            return {"rolled_back": False}
        self._cleanup_dest(uuid)
        try:
            self.db.migration_update(mid, status=states.MIG_FAILED, finished_at=utcnow(),
                                     step="rolled-back")
        except exception.MigrationNotFound:
            pass
        return {"rolled_back": True}

    # ---------------------------------------------------------------- start-up
    def recover(self):
        """At start-up: migrations this host was running when it died."""
        for mig in self.db.migration_get_all(
                statuses=(states.MIG_QUEUED, states.MIG_PREPARING, states.MIG_RUNNING,
                          states.MIG_POST)):
            if mig["kind"] != "live":
                continue
            uuid = mig["instance_uuid"]
            if mig["source"] == self.conf.host:
                dom = self.driver.lookup(uuid)
                if dom is not None:
                    # guest still here: the migration did not switch over
                    try:
                        dom.abortJob()
                    except libvirt.libvirtError:
                        pass
                    self._fail(context.new_context(), uuid, mig["id"],
                               "agent restarted during migration; guest kept on source")
                else:
                    self._upd(mig["id"], status=states.MIG_FAILED, finished_at=utcnow(),
                              error="agent restarted after switch-over; source files "
                                    "kept for the operator")
            else:
                try:
                    inst = self.db.instance_get(uuid)
                except exception.InstanceNotFound:
                    inst = None
                if inst is None or inst["state"] != states.MIGRATING:
                    continue
                if self.driver.lookup(uuid) is None:
                    self._cleanup_dest(uuid)
                    self._upd(mig["id"], status=states.MIG_FAILED, finished_at=utcnow(),
                              error="destination agent restarted during migration")
                else:
                    # The guest arrived while we were down: verify before use.
                    try:
                        self.post_live_migration_at_destination(
                            context.new_context(), uuid, mig["id"],
                            (mig.get("extra") or {}).get("disk_info") or {})
                    except Exception as e:
                        LOG.error("recovered migration %s: %s", mig["id"], e)


def _short(e):
    return str(e).splitlines()[0][:500] if str(e) else e.__class__.__name__
