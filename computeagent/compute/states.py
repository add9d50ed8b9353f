"""Instance states, task states and the migration state machines (the values RPC
callers see).

Each migration kind has one explicit state machine: an enum of statuses and a
transition table ``{from: {to, ...}}`` (``None`` is "no record yet").  The database
refuses any status change the table does not allow, as a compare-and-swap in one SQL
statement (``Database.migration_update``), so two racing operations (confirm against
revert, a late rollback against a finished migration) cannot both win.  Steps are
finer-grained progress inside a status; they are recorded before they are taken.
"""
import enum

from computeagent.virt import power_state

BUILDING = "BUILDING"
ACTIVE = "ACTIVE"
STOPPED = "STOPPED"
MIGRATING = "MIGRATING"
RESIZE_VERIFY = "RESIZE_VERIFY"
ERROR = "ERROR"
DELETED = "DELETED"

INSTANCE_STATES = (BUILDING, ACTIVE, STOPPED, MIGRATING, RESIZE_VERIFY, ERROR, DELETED)

# task states: what the agent is doing to the instance right now (None when idle)
SPAWNING = "spawning"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
REBOOTING = "rebooting"
DELETING = "deleting"
UPDATING_NETWORK = "updating-network"
MIGRATING_TASK = "migrating"
RESIZE_TASK = "resizing"

# power states, as libvirt reports them (defined by the hypervisor layer)
POWER_NOSTATE = power_state.NOSTATE
POWER_RUNNING = power_state.RUNNING
POWER_PAUSED = power_state.PAUSED
POWER_SHUTDOWN = power_state.SHUTDOWN
POWER_CRASHED = power_state.CRASHED
POWER_SUSPENDED = power_state.SUSPENDED



class LiveStatus(str, enum.Enum):
    """Live migration (kind ``live``); both hosts keep a record of the same id."""
    QUEUED = "queued"             # source: waiting for a migration slot
    PREPARING = "preparing"       # source: asking the destination; dest: preparing
    RUNNING = "running"           # source: migrateToURI3 running; dest: awaiting data
    POST = "post-migrating"       # source: switched over, destination verifying
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


L = LiveStatus
LIVE_TRANSITIONS = {
    None: {L.QUEUED,              # source: live_migrate accepted
           L.PREPARING,           # destination: pre_live_migration
           L.FAILED},             # destination: a rollback that came before the
                                  # preparation (a tombstone: a late one is refused)
    L.QUEUED: {L.PREPARING, L.CANCELLED, L.FAILED},
    L.PREPARING: {L.RUNNING, L.CANCELLED, L.FAILED},
    L.RUNNING: {L.POST,           # source: migrateToURI3 returned
                L.COMPLETED,      # destination: chain verified
                L.CANCELLED, L.FAILED},
    L.POST: {L.COMPLETED, L.FAILED},
    L.COMPLETED: set(), L.FAILED: set(), L.CANCELLED: set(),
}


class ResizeStatus(str, enum.Enum):
    """Resize / cold migration (kind ``resize``); a same-host resize has one record."""
    QUEUED = "queued"
    PREPARING = "preparing"       # source: prep_resize sent; dest: prepared
    MIGRATING = "migrating"       # source: power off, set aside, copy the overlay
    FINISHING = "finishing"       # destination defines, starts and verifies
    VERIFY_RESIZE = "verify-resize"   # waits for confirm or revert
    CONFIRMING = "confirming"     # exclusive with REVERTING: whichever wins the CAS
    REVERTING = "reverting"
    CONFIRMED = "confirmed"
    REVERTED = "reverted"
    FAILED = "failed"             # rolled back (or refused before anything moved)


R = ResizeStatus
RESIZE_TRANSITIONS = {
    None: {R.QUEUED,              # source: resize accepted
           R.PREPARING,           # destination: prep_resize
           R.FAILED},             # refused before anything moved / dest tombstone
    R.QUEUED: {R.PREPARING, R.FAILED},
    R.PREPARING: {R.MIGRATING, R.FINISHING, R.FAILED},
    R.MIGRATING: {R.FINISHING, R.FAILED},
    R.FINISHING: {R.VERIFY_RESIZE, R.FAILED},
    R.VERIFY_RESIZE: {R.CONFIRMING, R.REVERTING},
    R.CONFIRMING: {R.CONFIRMED},
    R.REVERTING: {R.REVERTED},
    R.CONFIRMED: set(), R.REVERTED: set(), R.FAILED: set(),
}

TRANSITIONS = {"live": LIVE_TRANSITIONS, "resize": RESIZE_TRANSITIONS}
STATUSES = {"live": LiveStatus, "resize": ResizeStatus}


def _val(s):
    return s.value if isinstance(s, enum.Enum) else s


def allowed_from(kind, to):
    """The statuses a migration of ``kind`` may move to ``to`` from (None: creation)."""
    table = TRANSITIONS[kind]
    return {_val(src) for src, nexts in table.items() if _val(to) in {_val(n) for n in nexts}}


def can_transition(kind, src, to):
    table = TRANSITIONS[kind]
    key = None if src is None else STATUSES[kind](_val(src))
    return _val(to) in {_val(n) for n in table.get(key, ())}


def terminal(kind):
    return tuple(_val(s) for s, nexts in TRANSITIONS[kind].items()
                 if s is not None and not nexts)


# live migration statuses (plain values, as stored and as RPC callers see them)
MIG_QUEUED = L.QUEUED.value
MIG_PREPARING = L.PREPARING.value
MIG_RUNNING = L.RUNNING.value
MIG_POST = L.POST.value
MIG_COMPLETED = L.COMPLETED.value
MIG_FAILED = L.FAILED.value
MIG_CANCELLED = L.CANCELLED.value
MIG_TERMINAL = terminal("live")
RESIZE_TERMINAL = terminal("resize")
