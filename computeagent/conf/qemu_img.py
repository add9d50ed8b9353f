from oslo_config import cfg

GROUP = "qemu_img"

opts = [
    cfg.IntOpt("address_space_limit_mb", default=1024, min=64,
               help="Address space limit (prlimit --as) for every qemu-img process, "
                    "MiB (CVE-2015-5162)."),
    cfg.IntOpt("cpu_time_limit", default=30, min=1,
               help="CPU time limit (prlimit --cpu) for qemu-img info, seconds."),
    cfg.IntOpt("long_cpu_time_limit", default=3600, min=1,
               help="CPU time limit for qemu-img operations that copy data "
                    "(convert), seconds."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
