"""The CLI's migration progress line: rate over the last seconds and ETA."""
import io

from computeagent.cli import base


def test_rate_and_eta():
    t = [0.0]
    p = base.Progress(io.StringIO(), clock=lambda: t[0])
    mib = 1 << 20
    p.line({"status": "running", "progress": 0, "data_processed": 0,
            "data_total": 100 * mib, "data_remaining": 100 * mib})
    t[0] = 2.0
    line = p.line({"status": "running", "progress": 20, "data_processed": 20 * mib,
                   "data_total": 100 * mib, "data_remaining": 80 * mib})
    assert "20%" in line and "20.0/100.0 MiB" in line
    assert "10.0 MiB/s" in line and "ETA 8s" in line
    t[0] = 3.0
    assert "done" in p.line({"status": "completed", "progress": 100,
                             "data_processed": 100 * mib, "data_total": 100 * mib,
                             "data_remaining": 0})


class _Args:
    wait_timeout = 30
    appear_timeout = 0.3


def test_wait_fails_fast_without_a_record():
    import time

    import pytest
    t0 = time.monotonic()
    with pytest.raises(base.Failed, match="no record of migration m1"):
        base.Waiter(None, _Args(), lambda: None, lambda r: True, "migration m1",
                    interval=0.05).wait()
    assert time.monotonic() - t0 < _Args.wait_timeout


def test_wait_times_out_with_the_last_state():
    import pytest
    args = _Args()
    args.wait_timeout = 0.3
    with pytest.raises(base.Failed, match="timed out .*'status': 'running'"):
        base.Waiter(None, args, lambda: {"status": "running"}, lambda r: False,
                    "migration m2", interval=0.05).wait()
