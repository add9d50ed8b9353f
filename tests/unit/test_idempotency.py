"""computeagent.compute.idempotency: a repeated reboot request changes nothing."""
from computeagent.compute import idempotency


def test_repeat_of_an_accepted_key_does_not_run():
    keys, runs = idempotency.RecentKeys(), []
    assert idempotency.once(keys, ("u1", "req-1"), runs.append, "a")
    assert not idempotency.once(keys, ("u1", "req-1"), runs.append, "b")
    assert idempotency.once(keys, ("u1", "req-2"), runs.append, "c")
    assert idempotency.once(keys, ("u2", "req-1"), runs.append, "d")
    assert runs == ["a", "c", "d"]


def test_refused_request_may_run_when_sent_again():
    keys, runs = idempotency.RecentKeys(), []

    def refuse(_):
        raise RuntimeError("instance busy")
    try:
        idempotency.once(keys, ("u1", "req-1"), refuse, None)
    except RuntimeError:
        pass
    assert idempotency.once(keys, ("u1", "req-1"), runs.append, "again")
    assert runs == ["again"]


def test_no_request_id_never_deduplicated():
    keys, runs = idempotency.RecentKeys(), []
    for _ in range(3):
        idempotency.once(keys, ("u1", None), runs.append, 1)
    assert runs == [1, 1, 1]


def test_expired_and_bounded():
    keys = idempotency.RecentKeys(ttl=0.0, size=2)
    keys.remember("a")
    assert not keys.seen("a")
    for k in "bcd":
        keys.remember(k)
    assert len(keys._keys) == 2
