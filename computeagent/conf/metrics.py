from oslo_config import cfg

GROUP = "metrics"

opts = [
    cfg.PortOpt("port", default=0,
                help="TCP port of the Prometheus endpoint (GET /metrics); 0 (the "
                     "default) turns it off. 9185 is the documented choice."),
    cfg.HostAddressOpt("bind_address", default="127.0.0.1",
                       help="Address the Prometheus endpoint listens on. Loopback by "
                            "default; use a management address only behind a firewall "
                            "(the endpoint has no authentication)."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
