"""The destination side of a live migration (a mixin of
:class:`computeagent.compute.live_migration.LiveMigrationFlows`): prepare (base
through the cache or from the source, overlay pre-created), verify the arrival
(backing chain), roll back -- each under the instance's lock, tied to the record."""
import logging
import os
import time


from computeagent import exception
from computeagent.compute import base_image
from computeagent.compute import states
from computeagent.compute.background import short as _short
from computeagent.compute.live_common import GuestNotArrived
from computeagent.db.models import utcnow
from computeagent.images import chain as disk_chain
from computeagent.images import qemu_img
from computeagent.rpc import schema

LOG = logging.getLogger("computeagent.compute.live_migration")
S = states.LiveStatus


class DestinationSide:
    # ------------------------------------------------------------- destination
    def pre_live_migration(self, ctx, instance, migration, disk_info):
        uuid = schema.uuid_of(instance.get("uuid"))
        mid = schema.migration_id(migration.get("id"))
        source = schema.host_name(migration.get("source"))
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
        deadline = migration.get("pre_deadline")
        if not isinstance(deadline, (int, float)):
            deadline = None
        # Held for the whole preparation: a rollback for this migration waits
        # for it, then removes what it made (it cannot race it).
        with self._lock(uuid):
            if deadline is not None and time.time() > deadline:
                raise exception.MigrationError(
                    reason="pre-migration request for %s arrived after its deadline"
                    % mid)
            try:
                existing = self.db.instance_get(uuid)
            except exception.InstanceNotFound:
                existing = None
            if existing is not None:
                raise exception.MigrationError(
                    reason="instance %s already has a record here (%s)"
                    % (uuid, existing["state"]))
            if self.driver.lookup(uuid) is not None:
                raise exception.MigrationError(reason="a domain %s already exists here"
                                               % uuid)
            if os.path.exists(self.driver.instance_dir(uuid)):
                raise exception.MigrationError(
                    reason="instance directory %s already exists here"
                    % self.driver.instance_dir(uuid))
            if self.db.migration_create({
                    "id": mid, "instance_uuid": uuid, "kind": "live", "source": source,
                    "dest": self.host, "status": states.MIG_PREPARING,
                    "step": "preparing", "progress": 0, "data_total": 0,
                    "data_processed": 0, "data_remaining": 0, "started_at": utcnow(),
                    "extra": {"role": "dest", "disk_info": disk_info}}) is None:
                raise exception.MigrationError(
                    reason="migration %s already has a record here (rolled back?)" % mid)
            self.db.instance_create({
                "uuid": uuid, "name": inst["name"], "host": self.host,
                "state": states.MIGRATING, "task_state": states.MIGRATING_TASK,
                "power_state": states.POWER_NOSTATE, "flavor": inst["flavor"],
                "image": inst["image"], "networks": inst["networks"],
                "meta": inst["metadata"], "disk_path": path, "base_path": expected_base,
                "request_id": ctx.request_id})
            try:
                fetched_from = base_image.ensure(self.driver, self.cache, inst["image"],
                                                 source, disk_info)
                with self.cache.using(inst["image"]) as base:
                    digest = base.digest
                    self.driver.make_instance_dir(uuid)
                    if "flat_overlay" in self.conf.debug.fault_injection:
                        # Test-only: reproduce the 2011 bug (overlay without backing).
                        LOG.error("FAULT INJECTION: pre-creating %s without backing "
                                  "file", path)
                        qemu_img.create_flat(path, vsize)
                    else:
                        qemu_img.create_overlay(path, expected_base,
                                                disk_info["backing_format"], vsize)
                self.m.configdrive.at_destination(  # issue 13: travels
                    inst, source, source_has=disk_info.get("config_drive"))
                self._crash_point("live-dest:preparing")
                # the caller gave up meanwhile: it rolls back (or already did);
                # do not leave anything behind for a migration that never comes
                if deadline is not None and time.time() > deadline:
                    raise exception.MigrationError(
                        reason="pre-migration of %s outlived its caller's deadline; "
                        "undone" % mid)
                self._set(mid, S.RUNNING, step="awaiting-data",
                          expected_status=states.MIG_PREPARING)
            except Exception:
                self._cleanup_dest(uuid, mid, "preparation failed")
                raise
        return {"disk_path": path, "base_path": expected_base, "base_digest": digest,
                "base_from": fetched_from,
                # issue 11: where the source sends the QEMU streams (None: host name)
                "inbound_addr": self.conf.migration.inbound_addr}

    def _cleanup_dest(self, uuid, mid, why):
        """Remove what the destination created: domain, instance dir, instance
        record; the migration record stays, FAILED (a tombstone).  Never the base."""
        try:
            self.driver.destroy(uuid)
        except Exception:
            LOG.exception("destroying %s during rollback", uuid)
        self.driver.remove_instance_dir(uuid)
        self.db.instance_destroy(uuid)
        try:
            mig = self.db.migration_get(mid)
            if mig["status"] not in states.MIG_TERMINAL:
                self._set(mid, S.FAILED, step="rolled-back", error=why[:4000],
                          finished_at=utcnow())
        except exception.MigrationNotFound:
            pass

    def _dest_record(self, method, uuid, mid):
        mig = self.db.migration_get(mid)
        if mig["kind"] != "live" or mig["instance_uuid"] != uuid or \
                mig["dest"] != self.host:
            raise exception.PeerRefused(method=method, reason="migration %s is not a "
                                        "live migration of %s to %s" % (mid, uuid,
                                                                        self.host))
        return mig

    def post_live_migration_at_destination(self, ctx, uuid, mid, disk_info):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        with self._lock(uuid):
            mig = self._dest_record("post_live_migration_at_destination", uuid, mid)
            if mig["status"] != states.MIG_RUNNING:
                raise exception.PeerRefused(
                    method="post_live_migration_at_destination",
                    reason="migration %s is %s here" % (mid, mig["status"]))
            return self._verify_arrival(ctx, uuid, mid, disk_info)

    def _verify_arrival(self, ctx, uuid, mid, disk_info):
        """The guest switched over to this host: it must run here with no job
        left, on a verified chain; then the instance is ACTIVE here."""
        facts = self._wait_job_end(self.driver.domain_facts, uuid, 60)
        if facts is None or facts["job_active"] or not facts["active"]:
            raise GuestNotArrived(uuid=uuid, reason="domain %s" % (facts,))
        self._crash_point("live-dest:post-migrating")
        inst = self.db.instance_get(uuid)
        expected_base = self.cache.base_path(inst["image"]["id"])
        problems = disk_chain.chain_problems(
            self.driver.disk_path(uuid), expected_base, disk_info.get("backing_format"),
            disk_info.get("virtual_size"),
            base_digest=self.cache.digest(inst["image"]["id"]),
            expected_digest=disk_info.get("base_digest"))
        stats = self.driver.completed_job_stats(uuid)
        if problems:
            fault = "backing chain check failed after live migration: " + "; ".join(
                problems)
            inst = self.db.instance_update(uuid, state=states.ERROR, task_state=None,
                                           fault=fault,
                                           power_state=self.driver.power_state(uuid))
            self._set(mid, S.FAILED, step="chain-invalid", error=fault,
                      finished_at=utcnow())
            self.notifier.instance(ctx, inst, "live_migration", "chain_error",
                                   fault=fault, migration_id=mid, problems=problems)
            raise exception.BackingChainInvalid(path=self.driver.disk_path(uuid),
                                                reason="; ".join(problems))
        self.db.instance_update(uuid, state=states.ACTIVE, task_state=None, fault=None,
                                power_state=self.driver.power_state(uuid),
                                disk_path=self.driver.disk_path(uuid),
                                base_path=expected_base)
        self._set(mid, S.COMPLETED, step="verified", finished_at=utcnow(),
                  progress=100)
        return {"verified": True, "job_stats": stats}

    def rollback_live_migration_at_destination(self, ctx, uuid, mid):
        uuid = schema.uuid_of(uuid)
        mid = schema.migration_id(mid)
        method = "rollback_live_migration_at_destination"
        with self._lock(uuid):
            try:
                mig = self._dest_record(method, uuid, mid)
            except exception.MigrationNotFound:
                # before the preparation (still queued, or lost): a tombstone, so
                # a late pre_live_migration of this id is refused
                self.db.migration_create({
                    "id": mid, "instance_uuid": uuid, "kind": "live", "source": "",
                    "dest": self.host, "status": states.MIG_FAILED,
                    "step": "rolled-back-before-prepare", "finished_at": utcnow(),
                    "progress": 0, "data_total": 0, "data_processed": 0,
                    "data_remaining": 0, "extra": {"role": "dest"}})
                return {"rolled_back": False, "state": "nothing-here"}
            if mig["status"] in (states.MIG_FAILED, states.MIG_CANCELLED):
                return {"rolled_back": False, "state": mig["status"]}
            if mig["status"] not in (states.MIG_PREPARING, states.MIG_RUNNING):
                raise exception.PeerRefused(method=method, reason="migration %s is %s "
                                            "here" % (mid, mig["status"]))
            # never remove the only running copy: if the guest runs here, it must
            # still run on the source too (a failed switch-over)
            facts = self._wait_job_end(self.driver.domain_facts, uuid, 60)
            if facts is not None and facts["active"]:
                try:
                    there = self.driver.peer_domain_facts(mig["source"], uuid)
                except exception.HypervisorUnavailable as e:
                    raise exception.MigrationError(
                        reason="the guest runs here and %s cannot be asked whether it "
                        "runs there too: kept (%s)" % (mig["source"], _short(e)))
                if there is None or not there["active"]:
                    raise exception.MigrationError(
                        reason="the guest runs here and not on %s: kept"
                        % mig["source"])
            self._cleanup_dest(uuid, mid, "rolled back by the source")
            return {"rolled_back": True, "state": states.MIG_FAILED}
