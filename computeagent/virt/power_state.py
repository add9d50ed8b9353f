"""Power states, as libvirt reports them (the values RPC callers see)."""

NOSTATE = "NOSTATE"
RUNNING = "RUNNING"
PAUSED = "PAUSED"
SHUTDOWN = "SHUTDOWN"
CRASHED = "CRASHED"
SUSPENDED = "SUSPENDED"
