from oslo_config import cfg

GROUP = "image_cache"

opts = [
    cfg.StrOpt("subdirectory_name", default="_base",
               help="Directory under instances_path holding cached base images."),
    cfg.BoolOpt("remove_unused_base_images", default=True,
                help="Whether the aging task removes base images no instance uses."),
    cfg.IntOpt("remove_unused_original_minimum_age_seconds", default=86400, min=0,
               help="An unused base image is removed only when older than this."),
    cfg.ListOpt("allowed_file_dirs", default=[],
                help="Directories file:// image URLs may point into. Empty means "
                     "file:// images are refused."),
    cfg.ListOpt("allowed_url_hosts", default=[],
                help="Hosts and networks http(s) image URLs may point to: host "
                     "names (exact, case-insensitive) and IP networks in CIDR form "
                     "(e.g. glance.example.org, 10.20.0.0/16); a name matches a "
                     "network entry only when every address it resolves to is inside. "
                     "Redirects are followed only within the list. Empty: any host "
                     "(set it on every real cloud; docs/security.md)."),
    cfg.IntOpt("download_timeout", default=300, min=1,
               help="Socket timeout, seconds, while downloading an image."),
    cfg.IntOpt("max_image_size_gb", default=64, min=1,
               help="Largest image body accepted, in GiB."),
    cfg.IntOpt("precache_workers", default=2, min=1, max=64,
               help="Images pre-cached at once on this host (cache_images): a "
                    "bounded pool apart from the spawn/migration workers."),
    cfg.IntOpt("max_virtual_size_gb", default=2048, min=1,
               help="Largest virtual disk size an image may declare, in GiB."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
