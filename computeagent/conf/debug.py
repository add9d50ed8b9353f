from oslo_config import cfg

GROUP = "debug"

opts = [
    cfg.ListOpt("fault_injection", default=[],
                help="TESTS ONLY, never in production. Faults the agent injects on "
                     "purpose so tests can prove they are caught: 'flat_overlay' "
                     "pre-creates the live-migration destination disk without its "
                     "backing file (the 2011 corruption)."),
    cfg.ListOpt("crash_at", default=[], mutable=True,
                help="TESTS ONLY, never in production. Points of the resize flow "
                     "where the agent kills itself with SIGKILL, to prove crash "
                     "recovery: source:after-power-off, source:during-copy, "
                     "source:after-copy, dest:before-start, dest:after-start, "
                     "dest:during-confirm, source:during-confirm, "
                     "dest:during-revert, source:during-revert; live migration: "
                     "live-source:queued, live-source:preparing, "
                     "live-source:running, live-source:post-migrating, "
                     "live-dest:preparing, live-dest:post-migrating. Re-read on "
                     "SIGHUP, so a test needs no restart to arm or clear a point."),
    cfg.ListOpt("pause_at", default=[], mutable=True,
                help="TESTS ONLY, never in production. 'point=seconds' entries: at "
                     "one of the crash_at points the agent waits that long (at most "
                     "600 s), so a test can restart the broker or cut a link at "
                     "exactly that step."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
