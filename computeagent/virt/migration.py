"""Live-migration policy as pure functions (no libvirt calls): flags, parameters,
progress and the completion-timeout decision. Easy to unit-test, easy to read."""
import dataclasses
import xml.etree.ElementTree as ET

import libvirt

from computeagent.virt import config as vconfig

GiB = 1024 ** 3
MIN_COMPLETION_TIMEOUT = 60
# QEMU 9.0.0 in libvirt's encoding (major * 1e6 + minor * 1e3 + micro)
TCG_DIRTY_TRACKING_FIXED_IN = 9_000_000


def tcg_migration_warning(virt_type, qemu_version):
    """Why live-migrating this host's guests can corrupt them, or None.

    QEMU before 9.0 loses guest writes when it live-migrates a TCG guest: its fast
    dirty-bitmap sync clears the dirty bits without resetting the TLB entries TCG
    filled while the page was dirty, so later stores through them are not tracked
    and the destination keeps the page's older content (upstream 03bfc2188f,
    "physmem: Fix migration dirty bitmap coherency with TCG memory access"; Debian
    12's 7.2.x does not have it; measured: docs/faults.md). KVM tracks dirty pages
    itself and is not affected."""
    if virt_type != "qemu" or not qemu_version or qemu_version >= TCG_DIRTY_TRACKING_FIXED_IN:
        return None
    v = "%d.%d.%d" % (qemu_version // 1_000_000, qemu_version // 1000 % 1000,
                      qemu_version % 1000)
    return ("virt_type=qemu (TCG) on QEMU %s: a live migration can lose guest writes "
            "and corrupt the guest (QEMU bug fixed in 9.0, commit 03bfc2188f); use KVM "
            "or QEMU >= 9.0 for guests that must survive live migration" % v)


def qemu_tls_warning(tls, cert_dir, exists):
    """Why incoming TLS migrations on this host start slowly, or None: QEMU makes
    its server-side TLS credentials for each incoming migration, and without
    ``dh-params.pem`` in its certificate directory it generates 2048-bit DH
    parameters each time (measured 0.3-1.0 s per credential set on an idle
    2-core host; ~10 ms with the file). ``exists(path)`` is os.path.exists."""
    if not tls or not cert_dir or not exists(cert_dir):
        return None
    path = cert_dir.rstrip("/") + "/dh-params.pem"
    if exists(path):
        return None
    return ("%s is missing: QEMU generates Diffie-Hellman parameters for every "
            "incoming TLS migration (0.3-1 s each); install a named group there, "
            "e.g. 'openssl genpkey -genparam -algorithm DH -pkeyopt group:ffdhe2048 "
            "-out %s' (docs/security.md)" % (path, path))


def migration_flags(block_migration=True, auto_converge=False, tls=False):
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER |
             libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if block_migration:
        # Copy only the overlay: the destination already has the base and an
        # overlay on it (pre_live_migration made them).
        flags |= libvirt.VIR_MIGRATE_NON_SHARED_INC
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if tls:
        # libvirt refuses the migration when TLS is not set up: fails closed.
        flags |= libvirt.VIR_MIGRATE_TLS
    return flags


def migration_params(dest_xml, disks=("vda",), bandwidth_mib=0):
    """The destination XML goes in as both the live and the persistent definition
    (CVE-2020-17376); ``migrate_disks`` names exactly the instance's own disk
    (LP#1719362: an empty list copies every attached volume)."""
    params = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: list(disks),
    }
    if bandwidth_mib:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(bandwidth_mib)
        # the cap holds after a switch to post-copy too (QEMU's default there: none)
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH_POSTCOPY] = int(bandwidth_mib)
    return params


def retarget_xml(xml, dest_host):
    """The migratable XML with the agent metadata naming its new owner."""
    root = ET.fromstring(xml)
    owner = root.find("./metadata/{%s}instance/{%s}owner-host"
                      % (vconfig.META_NS, vconfig.META_NS))
    if owner is not None:
        owner.text = dest_host
    return ET.tostring(root, encoding="unicode")


def completion_timeout(data_total, per_gib, minimum=MIN_COMPLETION_TIMEOUT):
    """Seconds a migration may run, scaled by the data to copy, at least ``minimum``
    (0 = never)."""
    if not per_gib:
        return 0
    return max(minimum, int(per_gib * data_total / GiB))


def should_abort(elapsed, data_total, per_gib, minimum=MIN_COMPLETION_TIMEOUT):
    limit = completion_timeout(data_total, per_gib, minimum)
    return bool(limit) and elapsed > limit


def progress(stats):
    """(percent 0-100, total, processed, remaining) from ``virDomainGetJobStats``."""
    total = int(stats.get("data_total", 0) or 0)
    processed = int(stats.get("data_processed", 0) or 0)
    remaining = int(stats.get("data_remaining", 0) or 0)
    if total <= 0:
        return 0, total, processed, remaining
    pct = int(100 * (total - remaining) / total)
    return max(0, min(100, pct)), total, processed, remaining


def byte_counters(stats):
    """Disk and memory bytes moved so far (``disk_*`` counts only what the block
    job copied: with NON_SHARED_INC, the overlay)."""
    return {"disk_total": int(stats.get("disk_total", 0) or 0),
            "disk_processed": int(stats.get("disk_processed", 0) or 0),
            "memory_processed": int(stats.get("memory_processed", 0) or 0)}


# ------------------------------------------------------------------ convergence
# A migration converges when what is left to copy fits in the allowed downtime at
# the link's rate. A guest dirtying memory faster than the link moves it never gets
# there by itself; the policy escalates, one decision at a time, each logged:
#   1. downtime steps: the allowed downtime rises in ``downtime_steps`` steps to
#      ``downtime`` ms, one step every ``downtime_delay`` s per GiB of RAM + disk;
#   2. auto-converge: QEMU throttles the vCPUs (the capability has to be set when
#      the job starts, so QEMU throttles from the first iterations on; the policy
#      gives the throttle time to work before it goes further: a stall window in
#      which neither the remaining data reached a new low nor the throttle rose);
#   3. post-copy (only when permitted): the guest switches to the destination and
#      pulls the rest of its memory on demand;
#   4. the completion deadline, fixed at the start from RAM + disk: ``abort`` (the
#      guest stays on the source) or ``force_complete`` (post-copy when permitted,
#      else the allowed downtime is raised to what the job expects, so QEMU copies
#      the rest with the guest paused: a long pause, but it finishes).

TIMEOUT_ACTIONS = ("abort", "force_complete")
MIN_STALL_WINDOW = 5.0
#: progress: a new low of the remaining data must be this much below the last
STALL_EPSILON = 0.02
#: QEMU's largest vCPU throttle (cpu-throttle-percentage max)
AUTO_CONVERGE_MAX = 99
#: seconds without data moved in post-copy before it is paused (a split link)
POST_COPY_STALL = 15.0
MiB = 1024 ** 2


@dataclasses.dataclass(frozen=True)
class ConvergenceOptions:
    downtime: int = 500                 # ms, the last step
    downtime_steps: int = 5
    downtime_delay: float = 10.0        # s per GiB of RAM + disk, between steps
    permit_auto_converge: bool = True
    auto_converge_initial: int = 0      # %, 0 = QEMU's own (20)
    auto_converge_increment: int = 0    # %, 0 = QEMU's own (10)
    permit_post_copy: bool = False
    timeout_action: str = "abort"
    completion_timeout_per_gib: int = 800
    completion_timeout_min: int = MIN_COMPLETION_TIMEOUT
    parallel_connections: int = 0       # 0/1 = one stream
    bandwidth_mib: int = 0

    @classmethod
    def from_conf(cls, mc):
        return cls(downtime=mc.downtime, downtime_steps=mc.downtime_steps,
                   downtime_delay=mc.downtime_delay,
                   permit_auto_converge=mc.permit_auto_converge,
                   auto_converge_initial=mc.auto_converge_initial,
                   auto_converge_increment=mc.auto_converge_increment,
                   permit_post_copy=mc.permit_post_copy,
                   timeout_action=mc.timeout_action,
                   completion_timeout_per_gib=mc.completion_timeout_per_gib,
                   completion_timeout_min=mc.completion_timeout_min,
                   parallel_connections=mc.parallel_connections,
                   bandwidth_mib=mc.bandwidth_mib)


def check_options(opts):
    """Problems with a combination QEMU 7.2 / libvirt 9.0 cannot run (the agent
    refuses to start with any): [] when the options are usable."""
    problems = []
    if opts.permit_post_copy and opts.parallel_connections > 1:
        problems.append("permit_post_copy cannot be combined with parallel_connections "
                        "> 1 (QEMU 7.2: multifd is not compatible with post-copy)")
    if opts.timeout_action not in TIMEOUT_ACTIONS:
        problems.append("timeout_action must be one of %s" % ", ".join(TIMEOUT_ACTIONS))
    if opts.downtime < 1:
        problems.append("downtime must be at least 1 ms")
    return problems


def downtime_schedule(opts, data_bytes):
    """[(seconds after start, allowed downtime ms)], nova's shape: step 0 at once,
    then ``downtime_steps`` equal increments up to ``downtime``."""
    steps = max(0, opts.downtime_steps)
    if steps == 0:
        return [(0.0, int(opts.downtime))]
    delay = opts.downtime_delay * data_bytes / GiB
    base = opts.downtime / steps
    offset = (opts.downtime - base) / steps
    return [(round(delay * i, 3), int(base + offset * i)) for i in range(steps + 1)]


def convergence_flags(opts):
    flags = 0
    if opts.permit_auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if opts.permit_post_copy:
        flags |= libvirt.VIR_MIGRATE_POSTCOPY
    if opts.parallel_connections > 1:
        flags |= libvirt.VIR_MIGRATE_PARALLEL
    return flags


def convergence_params(opts):
    params = {}
    if opts.permit_auto_converge and opts.auto_converge_initial:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL] = int(
            opts.auto_converge_initial)
    if opts.permit_auto_converge and opts.auto_converge_increment:
        params[libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT] = int(
            opts.auto_converge_increment)
    if opts.parallel_connections > 1:
        params[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = int(
            opts.parallel_connections)
    return params


def inbound_params(inbound_addr):
    """The destination's migration address: QEMU's stream goes to it (and the
    destination QEMU listens on it) instead of the management host name."""
    if not inbound_addr:
        return {}
    host = "[%s]" % inbound_addr if ":" in inbound_addr else inbound_addr
    return {libvirt.VIR_MIGRATE_PARAM_URI: "tcp://%s" % host,
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: inbound_addr}


@dataclasses.dataclass(frozen=True)
class ConvergenceState:
    """Where the policy stands; ``decide`` returns a new one."""
    started: float
    budget: int                          # seconds to the completion deadline
    schedule: tuple                      # ((t, ms), ...)
    step: int = -1                       # index into schedule; -1 before the first
    downtime_ms: int = 0                 # allowed downtime currently set
    phase: str = "pre-copy"
    low: int | None = None               # lowest data_remaining seen
    progress_at: float = 0.0             # when the remaining/throttle last improved
    throttle: int = 0                    # auto_converge_throttle %, last seen
    iteration: int = 0
    post_copy: bool = False              # post-copy started
    forced: bool = False                 # force_complete done
    expected_downtime_ms: int = 0
    decisions: tuple = ()                # ((t, what, why), ...)
    pc_processed: int = 0                # data_processed seen in post-copy
    pc_progress_at: float | None = None  # when post-copy last moved data
    pc_paused: bool = False              # post-copy paused (it stalled)


def start_convergence(opts, now, ram_bytes, disk_bytes):
    data = max(0, int(ram_bytes)) + max(0, int(disk_bytes))
    return ConvergenceState(started=now,
                            budget=completion_timeout(data, opts.completion_timeout_per_gib,
                                                      opts.completion_timeout_min),
                            schedule=tuple(downtime_schedule(opts, data)),
                            progress_at=now)


def expected_downtime_ms(stats, opts):
    """What the job expects the final pause to be: QEMU's own estimate when it
    reports one, else what remains over the rate it moves data at."""
    remaining = int(stats.get("memory_remaining", stats.get("data_remaining", 0)) or 0)
    bps = int(stats.get("memory_bps", 0) or 0)
    if not bps and opts.bandwidth_mib:
        bps = opts.bandwidth_mib * MiB
    if bps:
        return int(1000 * remaining / bps)
    return int(stats.get("downtime", 0) or 0)


def stall_window(opts, state):
    delay = state.schedule[1][0] if len(state.schedule) > 1 else 0
    return max(MIN_STALL_WINDOW, delay)


def decide(opts, state, stats, now):
    """One look at the job statistics: (new state, actions). Actions are tuples
    ``("downtime", ms, why)``, ``("post_copy", why)``, ``("abort", why)``,
    ``("pause_post_copy", why)``."""
    elapsed = now - state.started
    actions = []
    notes = []
    remaining = int(stats.get("data_remaining", 0) or 0)
    throttle = int(stats.get("auto_converge_throttle", 0) or 0)
    iteration = int(stats.get("memory_iteration", 0) or 0)
    low, progress_at = state.low, state.progress_at
    # (a job that has not sized its data yet reports remaining 0: not a low)
    counted = bool(stats) and remaining > 0 and int(stats.get("data_total", 0) or 0) > 0
    if counted and (low is None or remaining < low * (1 - STALL_EPSILON)):
        low, progress_at = remaining, now
    if throttle > state.throttle:
        progress_at = now
        notes.append((round(elapsed, 1), "throttle",
                      "QEMU throttles the vCPUs at %d%%" % throttle))
    expected = expected_downtime_ms(stats, opts) if stats else 0
    st = dataclasses.replace(state, low=low, progress_at=progress_at,
                             throttle=max(throttle, state.throttle) if not
                             state.post_copy else state.throttle,
                             iteration=max(iteration, state.iteration),
                             expected_downtime_ms=expected)
    if state.post_copy:
        # post-copy cannot be aborted; when it stops moving data (the link
        # split), pause it (the guest waits on both hosts, resumable by hand)
        # instead of waiting forever inside migrateToURI3
        processed = int(stats.get("data_processed", 0) or 0)
        if stats and processed > state.pc_processed:
            st = dataclasses.replace(st, pc_processed=processed, pc_progress_at=now)
        elif stats and not state.pc_paused and \
                now - (state.pc_progress_at or now) >= POST_COPY_STALL:
            why = ("post-copy moved no data for %.0fs (the link to the destination "
                   "is down?): pausing it; the guest is split between both hosts"
                   % (now - state.pc_progress_at))
            actions.append(("pause_post_copy", why))
            notes.append((round(elapsed, 1), "post-copy-paused", why))
            st = dataclasses.replace(st, pc_paused=True, phase="post-copy-paused")
        return _noted(st, notes), actions
    if state.forced:
        return _noted(st, notes), actions
    # 4. the deadline
    if state.budget and elapsed > state.budget:
        if opts.timeout_action == "force_complete":
            if opts.permit_post_copy:
                why = "completion deadline (%ds) passed: force_complete by post-copy" % (
                    state.budget)
                actions.append(("post_copy", why))
                notes.append((round(elapsed, 1), "post-copy", why))
                return _noted(dataclasses.replace(st, post_copy=True, forced=True,
                                                  phase="post-copy", pc_progress_at=now),
                              notes), actions
            ms = max(2 * max(st.downtime_ms, 1), int(expected * 1.5))
            why = ("completion deadline (%ds) passed: force_complete, allowed downtime "
                   "%d ms (the job expects %d ms)" % (state.budget, ms, expected))
            actions.append(("downtime", ms, why))
            notes.append((round(elapsed, 1), "force-complete", why))
            return _noted(dataclasses.replace(st, downtime_ms=ms, forced=True,
                                              phase="force-complete"), notes), actions
        why = "completion deadline (%ds, fixed at the start from RAM + disk) passed" % (
            state.budget)
        actions.append(("abort", why))
        notes.append((round(elapsed, 1), "abort", why))
        return _noted(dataclasses.replace(st, phase="aborting"), notes), actions
    # 1. downtime steps (the latest one due; none skipped in the record)
    step = st.step
    while step + 1 < len(st.schedule) and elapsed >= st.schedule[step + 1][0]:
        step += 1
    if step != st.step:
        ms = st.schedule[step][1]
        why = "downtime step %d/%d at %.1fs: allowed downtime %d ms" % (
            step, len(st.schedule) - 1, elapsed, ms)
        actions.append(("downtime", ms, why))
        notes.append((round(elapsed, 1), "downtime", why))
        st = dataclasses.replace(st, step=step, downtime_ms=ms, progress_at=now,
                                 phase="downtime-steps")
    steps_done = st.step == len(st.schedule) - 1
    if not steps_done:
        return _noted(st, notes), actions
    stalled = now - st.progress_at >= stall_window(opts, st) and st.iteration >= 2
    # 2. auto-converge: the steps did not do it; QEMU's throttle gets its window
    if opts.permit_auto_converge and st.phase == "downtime-steps" and \
            st.iteration >= 2 and expected > st.downtime_ms:
        why = ("downtime steps done (%d ms) and the job expects %d ms: auto-converge "
               "(throttle %d%%)" % (st.downtime_ms, expected, st.throttle))
        notes.append((round(elapsed, 1), "auto-converge", why))
        st = dataclasses.replace(st, phase="auto-converge")
    # 3. post-copy once nothing else makes progress
    if opts.permit_post_copy and stalled:
        why = ("no progress for %.0fs (remaining %d MiB, lowest %d MiB, throttle %d%%, "
               "expected downtime %d ms > %d ms): switching to post-copy" % (
                   now - st.progress_at, remaining // MiB, (st.low or 0) // MiB,
                   st.throttle, expected, st.downtime_ms))
        actions.append(("post_copy", why))
        notes.append((round(elapsed, 1), "post-copy", why))
        st = dataclasses.replace(st, post_copy=True, phase="post-copy",
                                 pc_progress_at=now)
    elif stalled and st.phase != "stalled" and not (
            opts.permit_auto_converge and st.throttle < AUTO_CONVERGE_MAX):
        why = ("no progress for %.0fs and nothing left to escalate: waiting for the "
               "completion deadline (%ds, then %s)" % (
                   now - st.progress_at, st.budget, opts.timeout_action))
        notes.append((round(elapsed, 1), "stalled", why))
        st = dataclasses.replace(st, phase="stalled")
    return _noted(st, notes), actions


def _noted(state, notes):
    if not notes:
        return state
    return dataclasses.replace(state, decisions=state.decisions + tuple(notes))


def convergence_view(opts, state):
    """What get_migration shows of the policy (JSON-safe)."""
    return {"phase": state.phase,
            "downtime_step": max(0, state.step),
            "downtime_steps": len(state.schedule) - 1,
            "downtime_ms": state.downtime_ms,
            "expected_downtime_ms": state.expected_downtime_ms,
            "throttle_pct": state.throttle,
            "memory_iteration": state.iteration,
            "auto_converge": bool(opts.permit_auto_converge),
            "post_copy_permitted": bool(opts.permit_post_copy),
            "post_copy": state.post_copy,
            "deadline_s": state.budget,
            "timeout_action": opts.timeout_action,
            "decisions": [{"t": t, "what": w, "why": y} for t, w, y in state.decisions]}
