import socket

from oslo_config import cfg

GROUP = "DEFAULT"

opts = [
    cfg.StrOpt("host", default=socket.gethostname(), sample_default="<hostname>",
               help="Name of this hypervisor. It is the RPC server name the scheduler "
                    "addresses, and it must be unique in the cloud."),
    cfg.StrOpt("instances_path", default="/var/lib/computeagent/instances",
               help="Where instance directories (<uuid>/disk) and the image cache "
                    "(_base) live. Must be the same path on every hypervisor for "
                    "live block migration."),
    cfg.StrOpt("rpc_topic", default="computeagent",
               help="RPC topic the agent listens on (target topic)."),
    cfg.IntOpt("long_task_workers", default=4, min=1,
               help="Bounded pool of threads for long operations (spawn, migrations)."),
    cfg.IntOpt("sync_power_state_interval", default=10, min=1,
               help="Seconds between power-state syncs against libvirt (lifecycle "
                    "events are handled as they arrive)."),
    cfg.IntOpt("image_cache_manager_interval", default=2400, min=0,
               help="Seconds between image cache aging runs (0 disables the task)."),
    cfg.IntOpt("rpc_call_timeout", default=30, min=1,
               help="Timeout of ordinary agent-to-agent RPC calls, in seconds."),
    cfg.IntOpt("stop_timeout", default=100, min=1,
               help="Seconds a stop (SIGTERM) may take to let running tasks finish; "
                    "past that the agent exits anyway (e.g. while no broker node is "
                    "reachable). Running live migrations get [migration] stop_grace "
                    "of it, at most stop_timeout - 30 s (their abort and rollback "
                    "must fit). Keep it below systemd's TimeoutStopSec (120)."),
    cfg.StrOpt("state_path", default="/var/lib/computeagent",
               help="Directory of the agent's own state (database, locks)."),
    cfg.StrOpt("lock_path", default="$state_path/locks",
               help="Directory of external (inter-process) file locks."),
]


def register_opts(conf):
    conf.register_opts(opts)


def list_opts():
    return [(GROUP, opts)]
