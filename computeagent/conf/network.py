from oslo_config import cfg

GROUP = "network"

opts = [
    cfg.ListOpt("allowed_bridges", default=[],
                help="Bridges guests may be plugged into. A network whose bridge is "
                     "not listed is refused as unknown; an empty list refuses every "
                     "network."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
