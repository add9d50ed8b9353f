from oslo_config import cfg

GROUP = "database"

opts = [
    cfg.StrOpt("connection", default="sqlite:///$state_path/computeagent.sqlite",
               secret=True,
               help="SQLAlchemy URL of the agent's local database."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
