"""Every allowed and every forbidden transition of both migration state machines,
enforced by the database as a compare-and-swap."""
import itertools
import threading

import pytest

from computeagent import exception
from computeagent.compute import states
from computeagent.db import api


@pytest.fixture
def db(tmp_path):
    d = api.Database("sqlite:///%s" % (tmp_path / "t.db"))
    d.sync()
    return d


def _path_to(kind, target):
    """Shortest chain of statuses from creation to ``target`` (BFS on the table)."""
    table = states.TRANSITIONS[kind]
    frontier = [[s.value] for s in table[None]]
    seen = set()
    while frontier:
        path = frontier.pop(0)
        if path[-1] == target:
            return path
        if path[-1] in seen:
            continue
        seen.add(path[-1])
        for n in table[states.STATUSES[kind](path[-1])]:
            frontier.append(path + [n.value])
    raise AssertionError("unreachable %s" % target)


def _record(db, kind, status, mid="m"):
    path = _path_to(kind, status)
    db.migration_create({"id": mid, "instance_uuid": "u", "kind": kind, "source": "a",
                         "dest": "b", "status": path[0], "extra": {}})
    for s in path[1:]:
        db.migration_update(mid, status=s)
    assert db.migration_get(mid)["status"] == status


CASES = [(kind, src.value, to.value)
         for kind, enum_ in states.STATUSES.items()
         for src, to in itertools.product(enum_, enum_)]


@pytest.mark.parametrize("kind,src,to", CASES)
def test_every_transition(db, kind, src, to):
    _record(db, kind, src)
    allowed = states.can_transition(kind, src, to)
    if allowed:
        assert db.migration_update("m", status=to, step="s")["status"] == to
    else:
        with pytest.raises(exception.InvalidTransition):
            db.migration_update("m", status=to, step="s")
        after = db.migration_get("m")
        assert after["status"] == src and after["step"] != "s"


@pytest.mark.parametrize("kind,status", [(k, s.value) for k, e in states.STATUSES.items()
                                         for s in e])
def test_creation(db, kind, status):
    values = {"id": "c", "instance_uuid": "u", "kind": kind, "source": "a", "dest": "b",
              "status": status, "extra": {}}
    if states.can_transition(kind, None, status):
        assert db.migration_create(values)["status"] == status
        assert db.migration_create(values) is None          # duplicate id
    else:
        with pytest.raises(exception.InvalidTransition):
            db.migration_create(values)


def test_terminal_states_have_no_way_out():
    assert set(states.MIG_TERMINAL) == {"completed", "failed", "cancelled"}
    assert set(states.RESIZE_TERMINAL) == {"confirmed", "reverted", "failed"}


def test_confirm_and_revert_race_one_winner(db):
    """Threads racing out of verify-resize: exactly one of them wins."""
    for i in range(20):
        mid = "r%d" % i
        _record(db, "resize", "verify-resize", mid=mid)
        wins, barrier = [], threading.Barrier(2)

        def go(to):
            barrier.wait()
            try:
                db.migration_update(mid, status=to)
                wins.append(to)
            except exception.InvalidTransition:
                pass
        ts = [threading.Thread(target=go, args=(t,)) for t in ("confirming", "reverting")]
        [t.start() for t in ts]
        [t.join() for t in ts]
        assert len(wins) == 1 and db.migration_get(mid)["status"] == wins[0]


def test_expected_status_narrows(db):
    _record(db, "live", "running")
    with pytest.raises(exception.InvalidTransition):
        db.migration_update("m", expected_status="preparing", progress=5)
    assert db.migration_update("m", expected_status=["running"], progress=5)["progress"] == 5
