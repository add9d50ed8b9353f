"""Instance states, task states and migration statuses (the values RPC callers see)."""

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

# power states, as libvirt reports them
POWER_NOSTATE = "NOSTATE"
POWER_RUNNING = "RUNNING"
POWER_PAUSED = "PAUSED"
POWER_SHUTDOWN = "SHUTDOWN"
POWER_CRASHED = "CRASHED"
POWER_SUSPENDED = "SUSPENDED"

# live migration statuses
MIG_QUEUED = "queued"
MIG_PREPARING = "preparing"
MIG_RUNNING = "running"
MIG_POST = "post-migrating"
MIG_COMPLETED = "completed"
MIG_FAILED = "failed"
MIG_CANCELLED = "cancelled"
MIG_TERMINAL = (MIG_COMPLETED, MIG_FAILED, MIG_CANCELLED)
