from oslo_config import cfg

GROUP = "migration"

opts = [
    cfg.IntOpt("max_concurrent_live_migrations", default=1, min=1,
               help="Outgoing live migrations run at once; others wait as queued."),
    cfg.IntOpt("pre_live_migration_timeout", default=300, min=1,
               help="Timeout of the pre-migration call to the destination, seconds "
                    "(it may download a base image)."),
    cfg.IntOpt("completion_timeout_per_gib", default=800, min=0,
               help="Seconds per GiB of data to copy before a live migration is "
                    "aborted (0 disables)."),
    cfg.IntOpt("bandwidth_mib", default=0, min=0,
               help="Migration bandwidth cap in MiB/s (0 = unlimited)."),
    cfg.BoolOpt("auto_converge", default=False,
                help="Throttle the guest's vCPUs when the migration does not converge."),
    cfg.BoolOpt("tls", default=False,
                help="Require TLS for migration streams; fails closed when libvirt "
                     "cannot provide it."),
    cfg.IntOpt("resize_finish_timeout", default=120, min=5,
               help="Timeout, seconds, of the call asking the destination to finish "
                    "a resize (rebase, grow, define, start, verify). On timeout the "
                    "source rolls the resize back."),
    cfg.IntOpt("resize_confirm_window", default=0, min=0,
               help="Seconds after which a resize in RESIZE_VERIFY is confirmed "
                    "automatically (0 = never)."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
