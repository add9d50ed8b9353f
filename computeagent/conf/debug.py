from oslo_config import cfg

GROUP = "debug"

opts = [
    cfg.ListOpt("fault_injection", default=[],
                help="TESTS ONLY, never in production. Faults the agent injects on "
                     "purpose so tests can prove they are caught: 'flat_overlay' "
                     "pre-creates the live-migration destination disk without its "
                     "backing file (the 2011 corruption)."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
