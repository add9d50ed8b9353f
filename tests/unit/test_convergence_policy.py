"""The convergence policy (virt/migration.py): every branch, as pure functions."""
import dataclasses

import libvirt
import pytest

from computeagent.virt import migration as m

MiB = m.MiB
GiB = m.GiB


def opts(**kw):
    base = dict(downtime=500, downtime_steps=5, downtime_delay=10.0,
                permit_auto_converge=False, permit_post_copy=False,
                timeout_action="abort", completion_timeout_per_gib=800,
                bandwidth_mib=16)
    base.update(kw)
    return m.ConvergenceOptions(**base)


def busy(remaining=24 * MiB, iteration=3, throttle=0, bps=16 * MiB):
    return {"type": 2, "data_total": 100 * MiB, "data_remaining": remaining,
            "data_processed": 50 * MiB, "memory_remaining": remaining,
            "memory_iteration": iteration, "memory_bps": bps,
            "auto_converge_throttle": throttle}


def run(o, st, samples):
    """Feed (t, stats) samples; returns the state and every action taken."""
    acts = []
    for t, stats in samples:
        st, a = m.decide(o, st, stats, t)
        acts.extend(a)
    return st, acts


# ------------------------------------------------------------ options and start
def test_check_options_refuses_post_copy_with_parallel_connections():
    assert m.check_options(opts()) == []
    assert m.check_options(opts(permit_post_copy=True, parallel_connections=4))
    assert m.check_options(opts(permit_post_copy=True, parallel_connections=1)) == []
    assert m.check_options(opts(timeout_action="pause"))
    assert m.check_options(opts(downtime=0))


def test_schedule_nova_shape_scaled_by_data():
    s = m.downtime_schedule(opts(), 2 * GiB)
    assert s == [(0.0, 100), (20.0, 180), (40.0, 260), (60.0, 340), (80.0, 420),
                 (100.0, 500)]
    assert m.downtime_schedule(opts(downtime_steps=0), GiB) == [(0.0, 500)]
    assert [t for t, _ in m.downtime_schedule(opts(downtime_delay=0), GiB)] == [0.0] * 6


def test_budget_fixed_at_start_from_ram_and_disk():
    st = m.start_convergence(opts(), 0.0, 2 * GiB, GiB)
    assert st.budget == 2400
    # the moving data_total does not change it
    st2, _ = m.decide(opts(), st, dict(busy(), data_total=100 * GiB), 1.0)
    assert st2.budget == 2400
    assert m.start_convergence(opts(), 0.0, 96 * MiB, 5 * MiB).budget == 78
    assert m.start_convergence(opts(completion_timeout_per_gib=400), 0.0, 96 * MiB,
                               5 * MiB).budget == 60
    assert m.start_convergence(opts(completion_timeout_per_gib=0), 0, GiB, 0).budget == 0


def test_flags_and_params():
    o = opts(permit_auto_converge=True, permit_post_copy=True, auto_converge_initial=50,
             auto_converge_increment=25)
    f = m.convergence_flags(o)
    assert f & libvirt.VIR_MIGRATE_AUTO_CONVERGE and f & libvirt.VIR_MIGRATE_POSTCOPY
    assert not f & libvirt.VIR_MIGRATE_PARALLEL
    p = m.convergence_params(o)
    assert p == {libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL: 50,
                 libvirt.VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT: 25}
    assert m.convergence_flags(opts()) == 0 and m.convergence_params(opts()) == {}
    par = opts(parallel_connections=4)
    assert m.convergence_flags(par) & libvirt.VIR_MIGRATE_PARALLEL
    assert m.convergence_params(par) == {libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS: 4}
    # throttle parameters only when auto-converge is permitted
    assert m.convergence_params(opts(auto_converge_initial=50)) == {}


def test_inbound_params():
    assert m.inbound_params(None) == {}
    p = m.inbound_params("198.51.100.7")
    assert p[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://198.51.100.7"
    assert p[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] == "198.51.100.7"
    assert m.inbound_params("2001:db8::7")[libvirt.VIR_MIGRATE_PARAM_URI] == \
        "tcp://[2001:db8::7]"


# --------------------------------------------------------------- downtime steps
def test_first_step_at_once_then_one_step_per_delay():
    o = opts()
    st = m.start_convergence(o, 0.0, GiB, 0)          # 10 s per step
    st, a = m.decide(o, st, busy(), 0.5)
    assert a == [("downtime", 100, a[0][2])] and st.downtime_ms == 100
    assert st.phase == "downtime-steps"
    st, a = m.decide(o, st, busy(), 5.0)
    assert a == []
    st, a = m.decide(o, st, busy(), 10.5)
    assert [x[:2] for x in a] == [("downtime", 180)] and st.step == 1


def test_late_poll_jumps_to_the_step_due():
    o = opts()
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, a = m.decide(o, st, busy(), 35.0)
    assert [x[:2] for x in a] == [("downtime", 340)] and st.step == 3


def test_no_stats_no_progress_mark():
    o = opts()
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, {}, 1.0)
    assert st.low is None


# ------------------------------------------------------------------ auto-converge
def test_auto_converge_phase_after_steps_when_still_too_slow():
    o = opts(permit_auto_converge=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, busy(iteration=1), 0.5)
    assert st.phase == "downtime-steps"
    st, _ = m.decide(o, st, busy(iteration=2), 1.0)
    assert st.phase == "auto-converge"
    assert st.decisions[-1][1] == "auto-converge"


def test_auto_converge_not_entered_when_converging():
    o = opts(permit_auto_converge=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, busy(remaining=4 * MiB, iteration=2), 1.0)
    assert st.phase == "downtime-steps"    # 4 MiB / 16 MiB/s = 250 ms < 500 ms


def test_rising_throttle_counts_as_progress():
    o = opts(permit_auto_converge=True, permit_post_copy=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    samples = [(t, busy(throttle=min(99, 50 + 10 * int(t)))) for t in range(0, 6)]
    st, acts = run(o, st, samples)
    assert ("post_copy" not in [a[0] for a in acts])
    assert st.throttle == 99 - 99 % 1 and st.progress_at >= 4


def test_throttle_logged():
    o = opts(permit_auto_converge=True)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, busy(throttle=50), 1.0)
    assert any(w == "throttle" and "50%" in y for _, w, y in st.decisions)


# ---------------------------------------------------------------------- post-copy
def test_post_copy_after_stall_when_permitted():
    o = opts(permit_post_copy=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = run(o, st, [(t / 2, busy()) for t in range(0, 9)])    # 0..4 s
    assert acts == [("downtime", 500, acts[0][2])]
    st, acts = run(o, st, [(5.5, busy()), (6.0, busy())])
    assert [a[0] for a in acts] == ["post_copy"]
    assert st.post_copy and st.phase == "post-copy"
    # no abort after the switch, not even at the deadline (post-copy moving data)
    st, acts = m.decide(o, st, dict(busy(), data_processed=90 * MiB), 10000.0)
    assert acts == []


def test_post_copy_waits_for_the_steps():
    o = opts(permit_post_copy=True)          # 10 s per step at 1 GiB
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = run(o, st, [(t, busy()) for t in range(0, 59)])    # last step at 50 s
    assert "post_copy" not in [a[0] for a in acts]
    st, acts = run(o, st, [(t, busy()) for t in range(59, 70)])   # + a 10 s window
    assert [a[0] for a in acts].count("post_copy") == 1


def test_progress_resets_the_stall_window():
    o = opts(permit_post_copy=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    samples = [(t, busy(remaining=(60 - 5 * t) * MiB)) for t in range(0, 10)]
    st, acts = run(o, st, samples)
    assert "post_copy" not in [a[0] for a in acts]


def test_no_post_copy_in_the_first_iteration():
    o = opts(permit_post_copy=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = run(o, st, [(t, busy(iteration=1)) for t in range(0, 20)])
    assert "post_copy" not in [a[0] for a in acts]


def test_stalled_without_escalation_is_noted_once():
    o = opts(downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = run(o, st, [(t, busy()) for t in range(0, 30)])
    assert [w for _, w, _ in st.decisions].count("stalled") == 1
    assert st.phase == "stalled"


# ---------------------------------------------------------------------- deadline
def test_abort_at_the_deadline():
    o = opts(downtime_steps=0, completion_timeout_per_gib=400)
    st = m.start_convergence(o, 0.0, 96 * MiB, 0)      # 60 s
    st, acts = run(o, st, [(t, busy()) for t in range(0, 61)])
    assert "abort" not in [a[0] for a in acts]
    st, acts = m.decide(o, st, busy(), 60.5)
    assert [a[0] for a in acts] == ["abort"] and st.phase == "aborting"


def test_no_deadline_when_disabled():
    o = opts(completion_timeout_per_gib=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = m.decide(o, st, busy(), 1e6)
    assert "abort" not in [a[0] for a in acts]


def test_force_complete_by_post_copy():
    o = opts(timeout_action="force_complete", permit_post_copy=True,
             downtime_delay=1000, completion_timeout_per_gib=400)               # steps never end: post-copy only so
    st = m.start_convergence(o, 0.0, 96 * MiB, 0)
    st, acts = m.decide(o, st, busy(), 61.0)
    assert [a[0] for a in acts] == ["post_copy"] and st.post_copy and st.forced


def test_force_complete_by_downtime_without_post_copy():
    o = opts(timeout_action="force_complete", completion_timeout_per_gib=400)
    st = m.start_convergence(o, 0.0, 96 * MiB, 0)
    st, _ = m.decide(o, st, busy(), 1.0)
    st, acts = m.decide(o, st, busy(remaining=32 * MiB, bps=16 * MiB), 61.0)
    assert [a[:2] for a in acts] == [("downtime", 3000)]     # 2 s expected x 1.5
    assert st.forced and st.phase == "force-complete"
    st, acts = m.decide(o, st, busy(), 62.0)
    assert acts == []


# ----------------------------------------------------------------- what is seen
def test_expected_downtime():
    assert m.expected_downtime_ms(busy(remaining=8 * MiB, bps=16 * MiB), opts()) == 500
    assert m.expected_downtime_ms({"memory_remaining": 8 * MiB}, opts()) == 500
    assert m.expected_downtime_ms({"memory_remaining": 8 * MiB, "downtime": 77},
                                  opts(bandwidth_mib=0)) == 77


def test_view_is_json_safe_and_complete():
    import json
    o = opts(permit_auto_converge=True)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, busy(throttle=75), 1.0)
    v = m.convergence_view(o, st)
    json.dumps(v)
    assert v["downtime_step"] == 0 and v["downtime_steps"] == 5
    assert v["downtime_ms"] == 100 and v["throttle_pct"] == 75
    assert v["post_copy"] is False and v["deadline_s"] == 800
    assert [d["what"] for d in v["decisions"]] == ["throttle", "downtime"]


def test_decide_does_not_change_its_input():
    o = opts()
    st = m.start_convergence(o, 0.0, GiB, 0)
    before = dataclasses.asdict(st)
    m.decide(o, st, busy(), 50.0)
    assert dataclasses.asdict(st) == before


@pytest.mark.parametrize("field", ["downtime", "downtime_steps", "downtime_delay",
                                   "permit_auto_converge", "permit_post_copy",
                                   "timeout_action", "parallel_connections"])
def test_options_from_conf(field):
    import types
    mc = types.SimpleNamespace(**dataclasses.asdict(opts(parallel_connections=2)))
    assert getattr(m.ConvergenceOptions.from_conf(mc), field) == getattr(mc, field)


def test_stall_is_not_final_while_the_throttle_can_still_rise():
    o = opts(permit_auto_converge=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = run(o, st, [(t, busy(throttle=50)) for t in range(0, 20)])
    assert st.phase == "auto-converge"
    st, _ = run(o, st, [(t, busy(throttle=99)) for t in range(20, 40)])
    assert st.phase == "stalled"


def test_remaining_zero_before_the_job_is_sized_is_not_a_low():
    o = opts()
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, _ = m.decide(o, st, {"type": 2, "data_total": 0, "data_remaining": 0}, 0.5)
    assert st.low is None
    st, _ = m.decide(o, st, busy(remaining=30 * MiB), 1.0)
    assert st.low == 30 * MiB


def test_post_copy_that_stops_moving_data_is_paused_once():
    o = opts(permit_post_copy=True, downtime_delay=0)
    st = m.start_convergence(o, 0.0, GiB, 0)
    st, acts = run(o, st, [(t / 2, busy()) for t in range(0, 13)])
    assert st.post_copy
    moving = [(6 + t, dict(busy(), data_processed=(60 + t) * MiB)) for t in range(20)]
    st, acts = run(o, st, moving)
    assert acts == []                        # data moves: nothing to do
    stuck = [(26 + t, dict(busy(), data_processed=79 * MiB)) for t in range(20)]
    st, acts = run(o, st, stuck)
    assert [a[0] for a in acts] == ["pause_post_copy"]
    assert st.phase == "post-copy-paused" and st.pc_paused
