"""The libvirt side of a live migration (every libvirt call the live flow needs):
``migrateToURI3`` in a thread with job statistics polled into a progress callback,
the job-completed event, ``abortJob``, and what a host's libvirtd says about a
domain (is it there, is it running, does it still have a migration job).

The flow in :mod:`computeagent.compute.live_migration` sees only plain values and
:class:`MigrationJobFailed`; it never imports libvirt.
"""
import dataclasses
import logging
import threading
import time

import libvirt

from computeagent import exception
from computeagent.virt import guest as vguest
from computeagent.virt import migration as policy

LOG = logging.getLogger(__name__)

_ACTIVE_JOB = (libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED)


class MigrationJobFailed(Exception):
    """migrateToURI3 returned an error (``aborted``: after abortJob was asked)."""

    def __init__(self, reason, aborted=False):
        super().__init__(reason)
        self.aborted = aborted


def migratable_xml(dom):
    return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE)


def job_info(dom, completed=False):
    """The domain's job statistics as a plain dict ({} when there is none or it
    cannot be asked); ``type`` 0/NONE means no job."""
    if dom is None:
        return {}
    try:
        stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0)
    except libvirt.libvirtError:
        return {}
    return {k: v for k, v in stats.items() if isinstance(v, (int, float))}


def job_active(stats):
    return stats.get("type", 0) in _ACTIVE_JOB


def abort_job(dom):
    """Ask libvirt to abort the domain's job; False when there was none."""
    try:
        dom.abortJob()
        return True
    except libvirt.libvirtError as e:
        LOG.info("abortJob: %s", e)
        return False


class Convergence:
    """The convergence policy (:func:`policy.decide`) applied to one job: every
    look at the statistics may set the allowed downtime, start post-copy or ask
    for an abort; each decision is logged and kept for the record."""

    def __init__(self, opts, ram_bytes, disk_bytes, clock=time.monotonic, name=""):
        self.opts = opts
        self.clock = clock
        self.name = name
        self.state = policy.start_convergence(opts, clock(), ram_bytes, disk_bytes)
        LOG.info("migration %s: convergence policy: deadline %ds, downtime steps %s, "
                 "auto-converge %s, post-copy %s, timeout_action %s", name,
                 self.state.budget, list(self.state.schedule),
                 opts.permit_auto_converge, opts.permit_post_copy, opts.timeout_action)

    def view(self):
        return policy.convergence_view(self.opts, self.state)

    def look(self, dom, stats):
        """Apply the policy to ``stats``; returns an abort reason or None."""
        before = len(self.state.decisions)
        self.state, actions = policy.decide(self.opts, self.state, stats, self.clock())
        for t, what, why in self.state.decisions[before:]:
            LOG.info("migration %s: +%.1fs %s: %s", self.name, t, what, why)
        reason = None
        for action in actions:
            if action[0] == "downtime":
                try:
                    dom.migrateSetMaxDowntime(int(action[1]), 0)
                except libvirt.libvirtError as e:
                    LOG.warning("migration %s: migrateSetMaxDowntime(%s): %s",
                                self.name, action[1], e)
                    self._note("error", "setting the downtime failed: %s" % e)
            elif action[0] == "post_copy":
                try:
                    dom.migrateStartPostCopy(0)
                except libvirt.libvirtError as e:
                    LOG.warning("migration %s: migrateStartPostCopy: %s", self.name, e)
                    self._note("error", "starting post-copy failed: %s" % e)
            elif action[0] == "pause_post_copy":
                try:
                    dom.abortJobFlags(libvirt.VIR_DOMAIN_ABORT_JOB_POSTCOPY)
                except libvirt.libvirtError as e:
                    LOG.warning("migration %s: pausing post-copy: %s", self.name, e)
                    self._note("error", "pausing post-copy failed: %s" % e)
            elif action[0] == "abort":
                reason = "completion timeout: %s" % action[1]
        return reason

    def _note(self, what, why):
        t = round(self.clock() - self.state.started, 1)
        self.state = dataclasses.replace(
            self.state, decisions=self.state.decisions + ((t, what, why),))


class _StatsAsker:
    """``job_info`` in a helper thread, so a libvirtd that does not answer cannot
    stop the monitor; one question at a time (None: no answer in time)."""

    def __init__(self, dom):
        self.dom = dom
        self.pending = None
        self.answer = {}

    def ask(self, timeout):
        if self.pending is None or not self.pending.is_alive():
            done = threading.Event()
            box = self.answer = {}

            def run():
                box["stats"] = job_info(self.dom)
                done.set()
            self.pending = threading.Thread(target=run, name="jobStats", daemon=True)
            self.pending.done = done
            self.pending.start()
        if self.pending.done.wait(timeout):
            return self.answer.get("stats", {})
        return None


def run_migration(conn, dom, uri, params, flags, on_progress, interval=0.5,
                  converge=None):
    """Migrate ``dom`` to ``uri``; returns (last polled stats, completed stats).

    Every ``interval`` seconds ``on_progress(stats)`` gets the job statistics
    (only while a job is active); when it returns a reason, the job is aborted and
    :class:`MigrationJobFailed` (aborted=True) carries that reason.  The completed
    statistics come from the job-completed event (the source domain is undefined
    at the end, so they cannot be asked for afterwards).  With ``converge`` (a
    :class:`Convergence`) each poll first applies the policy; ``on_progress``
    then sees its view under ``stats["convergence"]`` and may still abort."""
    result = {}
    completed = {}
    done = threading.Event()

    def do_migrate():
        try:
            dom.migrateToURI3(uri, params, flags)
            result["ok"] = True
        except libvirt.libvirtError as e:
            result["error"] = e
        except Exception as e:           # never lose the outcome
            result["error"] = e

    def on_job_completed(_conn, _dom, stats, _opaque):
        completed.update({k: v for k, v in stats.items() if isinstance(v, (int, float))})
        done.set()

    try:
        cb_id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_job_completed, None)
    except libvirt.libvirtError:
        cb_id = None
    t = threading.Thread(target=do_migrate, name="migrateToURI3", daemon=True)
    t.start()
    last = {}
    reason = None
    asker = _StatsAsker(dom)
    last_answer = {}
    try:
        while t.is_alive():
            t.join(interval)
            stats = asker.ask(timeout=max(2.0, 4 * interval))
            if stats is None:
                # libvirtd did not answer (seen when the link splits in post-copy):
                # the policy sees a job that moves nothing
                stats = {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "unanswered": 1}
            if job_active(stats):
                if "unanswered" not in stats:
                    last = stats
                if reason is None:
                    why = None
                    seen = stats
                    if converge is not None:
                        why = converge.look(dom, stats)
                        seen = dict(stats, convergence=converge.view())
                    if "unanswered" in stats:
                        # the record keeps the last answer, with the policy's view
                        seen = dict(last_answer, convergence=seen.get("convergence")) \
                            if last_answer else {}
                    else:
                        last_answer = stats
                    why = on_progress(seen) or why
                    if why:
                        reason = why
                        LOG.warning("aborting the migration job: %s", why)
                        abort_job(dom)
            elif reason is None and t.is_alive():
                why = on_progress({})
                if why:
                    reason = why
                    abort_job(dom)
    finally:
        if cb_id is not None:
            if "ok" in result:
                done.wait(2)
            try:
                conn.domainEventDeregisterAny(cb_id)
            except libvirt.libvirtError:
                pass
    if "error" in result:
        raise MigrationJobFailed(reason or "migrateToURI3: %s" % result["error"],
                                 aborted=reason is not None)
    return last, completed


def domain_facts(conn, uuid):
    """What the libvirtd behind ``conn`` has for ``uuid``: None (no domain) or
    ``{"power_state", "active", "job_active"}``."""
    try:
        dom = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise exception.HypervisorUnavailable(reason=str(e))
    try:
        return {"power_state": vguest.power_state(dom),
                "active": dom.isActive() == 1,
                "job_active": job_active(job_info(dom))}
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None          # went away while we asked
        raise exception.HypervisorUnavailable(reason=str(e))


def remote_domain_facts(uri, uuid):
    """:func:`domain_facts` asked of the libvirtd at ``uri`` (a peer host)."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise exception.HypervisorUnavailable(reason="%s: %s" % (uri, e))
    try:
        return domain_facts(conn, uuid)
    finally:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass


def wait_job_end(facts_fn, deadline):
    """Poll ``facts_fn()`` until the domain has no active job (or is gone) or the
    monotonic ``deadline`` passes; returns the last facts."""
    facts = facts_fn()
    while facts is not None and facts["job_active"] and time.monotonic() < deadline:
        time.sleep(0.5)
        facts = facts_fn()
    return facts
