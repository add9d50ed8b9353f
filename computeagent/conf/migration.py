from oslo_config import cfg

GROUP = "migration"

opts = [
    cfg.IntOpt("max_concurrent_live_migrations", default=1, min=1,
               help="Outgoing live migrations run at once; others wait as queued."),
    cfg.IntOpt("pre_live_migration_timeout", default=300, min=1,
               help="Timeout of the pre-migration call to the destination, seconds "
                    "(it may download a base image)."),
    cfg.IntOpt("completion_timeout_per_gib", default=800, min=0,
               help="Seconds per GiB of RAM + disk (fixed when the migration "
                    "starts, at least `completion_timeout_min`) before "
                    "`timeout_action` is taken (0 disables)."),
    cfg.IntOpt("completion_timeout_min", default=60, min=1,
               help="Shortest completion timeout, seconds, however small the guest."),
    cfg.IntOpt("bandwidth_mib", default=0, min=0, mutable=True,
               help="Migration bandwidth cap in MiB/s (0 = unlimited). Read when a "
                    "migration starts: after a SIGHUP, the next migration uses the "
                    "new value; running ones keep theirs."),
    cfg.IntOpt("downtime", default=500, min=100,
               help="Largest downtime, ms, the convergence policy allows at the end "
                    "of its downtime steps (the guest's final pause while the last "
                    "dirty memory is copied)."),
    cfg.IntOpt("downtime_steps", default=5, min=0,
               help="Steps in which the allowed downtime rises to `downtime` (0: "
                    "`downtime` from the start)."),
    cfg.FloatOpt("downtime_delay", default=10.0, min=0,
                 help="Seconds between downtime steps per GiB of RAM + disk to copy "
                      "(a 4 GiB guest: 40 s per step)."),
    cfg.BoolOpt("permit_auto_converge", default=True, deprecated_name="auto_converge",
                help="Let QEMU throttle the guest's vCPUs when the migration does not "
                     "converge (VIR_MIGRATE_AUTO_CONVERGE, set at the start; the "
                     "throttle is visible as throttle_pct in get_migration). The "
                     "guest slows down for a while but never leaves the source until "
                     "the switch-over, so it is on by default."),
    cfg.IntOpt("auto_converge_initial", default=50, min=0, max=99,
               help="First vCPU throttle, %, when auto-converge starts (0: QEMU's "
                    "20)."),
    cfg.IntOpt("auto_converge_increment", default=25, min=0, max=99,
               help="Throttle added, %, after each pass that still does not "
                    "converge (0: QEMU's 10)."),
    cfg.BoolOpt("permit_post_copy", default=False,
                help="Allow the switch to post-copy when nothing else makes progress "
                     "(VIR_MIGRATE_POSTCOPY at the start, migrateStartPostCopy when "
                     "the policy decides). After the switch the guest's memory lives "
                     "on both hosts: a network split loses the guest "
                     "(docs/operations.md). Off by default."),
    cfg.StrOpt("timeout_action", default="abort", choices=["abort", "force_complete"],
               help="At the completion deadline: abort (guest stays on the source) "
                    "or force_complete (post-copy when permitted, else a downtime "
                    "long enough for the rest)."),
    cfg.IntOpt("parallel_connections", default=0, min=0, max=32,
               help="Parallel migration streams (VIR_MIGRATE_PARALLEL); 0 or 1: one. "
                    "Not with permit_post_copy (QEMU 7.2)."),
    cfg.FloatOpt("progress_interval", default=5.0, min=0,
                 help="Seconds between writes of a running migration's progress to "
                      "the database (the job is polled every 0.5 s; a policy "
                      "decision is written at once)."),
    cfg.HostAddressOpt("inbound_addr", default=None,
                       help="Address on which this host takes incoming migration "
                            "streams (QEMU memory and NBD disk): peers send to it "
                            "instead of the management host name. Unset: the host "
                            "name."),
    cfg.BoolOpt("tls", default=True,
                help="Encrypt QEMU's migration streams (memory and the NBD disk "
                     "copy) with QEMU-native TLS (VIR_MIGRATE_TLS; both hosts' "
                     "qemu.conf need default_tls_x509_cert_dir with certificates of "
                     "the cloud's CA). Fails closed: a migration that cannot be "
                     "encrypted fails, the guest stays on the source. false needs "
                     "[libvirt] allow_insecure_transport."),
    cfg.StrOpt("qemu_tls_dir", default="/etc/pki/qemu",
               help="QEMU's TLS certificate directory on this host (qemu.conf "
                    "migrate_tls_x509_cert_dir, else default_tls_x509_cert_dir). Only "
                    "read at start-up: with tls on, the agent warns when "
                    "dh-params.pem is missing there, because QEMU then generates "
                    "Diffie-Hellman parameters on the destination for every "
                    "incoming TLS migration (0.3-1 s measured, more under load)."),
    cfg.IntOpt("resize_finish_timeout", default=120, min=5,
               help="Timeout, seconds, of the call asking the destination to finish "
                    "a resize (rebase, grow, define, start, verify). On timeout the "
                    "source rolls the resize back."),
    cfg.IntOpt("resize_confirm_window", default=0, min=0,
               help="Seconds after which a resize in RESIZE_VERIFY is confirmed "
                    "automatically (0 = never)."),
    cfg.IntOpt("peer_retry_timeout", default=300, min=0,
               help="Seconds for which a live migration retries, with backoff, the "
                    "calls that must reach its peer (post-migration and rollback at "
                    "the destination, and every peer call during start-up recovery), "
                    "e.g. across a broker restart."),
    cfg.IntOpt("stop_grace", default=60, min=0,
               help="On SIGTERM, seconds a running live migration may take to "
                    "finish before it is aborted and rolled back; capped at "
                    "[DEFAULT] stop_timeout - 30 s so that the abort and rollback "
                    "fit before the agent exits."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
