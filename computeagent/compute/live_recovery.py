"""Start-up recovery of live migrations (a mixin of
:class:`computeagent.compute.live_migration.LiveMigrationFlows`): ask libvirt on both
hosts where the guest runs and converge both records to one state."""
import logging

import tenacity

from computeagent import context
from computeagent import exception
from computeagent.compute import states
from computeagent.compute.background import short as _short
from computeagent.compute.live_common import ACTIVE_STATUSES, LiveFailed
from computeagent.db.models import utcnow

LOG = logging.getLogger("computeagent.compute.live_migration")
S = states.LiveStatus


class Recovery:
    # ---------------------------------------------------------------- start-up
    def recover(self):
        """At start-up: converge every live migration this host was part of, each
        in its own thread (retried while libvirtd here cannot be asked)."""
        for mig in self.db.migration_get_all(statuses=ACTIVE_STATUSES):
            if mig["kind"] != "live":
                continue
            self._start_thread("live-recover-%s" % mig["id"], mig["id"],
                               self._recover_retrying, mig["id"],
                               tracked=self._recovering)

    def in_flight_uuids(self):
        return {m["instance_uuid"] for m in self.db.migration_get_all(
            statuses=ACTIVE_STATUSES) if m["kind"] == "live"}

    def _recover_retrying(self, mid):
        context.adopt(context.new_context())

        def log_retry(state):
            LOG.warning("recovery of live migration %s: %s; retrying", mid,
                        _short(state.outcome.exception()))
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(exception.HypervisorUnavailable),
            wait=tenacity.wait_exponential(multiplier=0.5, max=10),
            stop=tenacity.stop_after_delay(24 * 3600), before_sleep=log_retry,
            reraise=True)
        retrying(self._recover_one, mid)

    def _recover_one(self, mid):
        mig = self.db.migration_get(mid)
        if mig["status"] in states.MIG_TERMINAL:
            return
        uuid = mig["instance_uuid"]
        ctx = context.new_context()
        LOG.warning("live migration %s was %s (step %s) when the agent stopped", mid,
                    mig["status"], mig.get("step"))
        with self._lock(uuid):
            if mig["source"] == self.host:
                self._recover_source(ctx, mig)
            else:
                self._recover_dest(ctx, mig)

    def _recover_source(self, ctx, mig):
        mid, uuid = mig["id"], mig["instance_uuid"]
        if mig["status"] == states.MIG_QUEUED:
            self._set(mid, S.CANCELLED, step="agent-restarted", finished_at=utcnow(),
                      error="agent restarted while queued")
            self._restore(ctx, uuid, mid, "agent restarted while the migration was "
                          "queued")
            return
        # libvirt here is asked first (HypervisorUnavailable: retried later)
        self.driver.domain_facts(uuid)
        self._fail(ctx, uuid, mid, LiveFailed(
            "agent restarted during migration (%s)" % mig.get("step"),
            rollback_dest=mig["status"] != states.MIG_PREPARING or
            (mig.get("extra") or {}).get("prep_sent", False)))

    def _recover_dest(self, ctx, mig):
        mid, uuid = mig["id"], mig["instance_uuid"]
        if mig["status"] == states.MIG_PREPARING:
            # the preparation call died with us; its caller rolls back (a FAILED
            # record here answers that) or already gave up
            self._cleanup_dest(uuid, mid, "destination agent restarted while "
                               "preparing")
            return
        # running: the guest may still be arriving -- wait for the job to end
        per_gib = self.conf.migration.completion_timeout_per_gib or 800
        facts = self._wait_job_end(self.driver.domain_facts, uuid, max(60, per_gib))
        if facts is None:
            # nothing arrived: the source keeps (or got back) the guest -- but only
            # when the source says it has it
            try:
                there = self._peer_facts(mig["source"], uuid, self._retry_for())
            except exception.HypervisorUnavailable:
                there = "unknown"
            if there in (None, "unknown"):
                LOG.error("live migration %s: the guest runs on neither host "
                          "(source: %s); the overlay here is kept", mid, there)
                return
            self._cleanup_dest(uuid, mid, "destination agent restarted; the guest "
                               "stayed on %s" % mig["source"])
            return
        if facts["job_active"]:
            LOG.error("live migration %s: the incoming job is still running; "
                      "recovery retried later", mid)
            raise exception.HypervisorUnavailable(reason="incoming job still active")
        try:
            there = self._peer_facts(mig["source"], uuid, self._retry_for())
        except exception.HypervisorUnavailable:
            there = "unknown"
        if facts["active"] and there is None:
            # switched over while we were down: verify before use; the source's
            # post call (or its recovery) then finds this record completed
            try:
                self._verify_arrival(ctx, uuid, mid,
                                     (mig.get("extra") or {}).get("disk_info") or {})
            except Exception as e:
                LOG.error("recovered live migration %s: %s", mid, e)
        # else: the source still has the guest (or cannot be asked): it decides
        # and rolls us back
