from oslo_config import cfg

GROUP = "libvirt"

opts = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt URI of this host's hypervisor."),
    cfg.StrOpt("virt_type", default="kvm", choices=["kvm", "qemu"],
               help="Domain type: kvm on real hypervisors, qemu (TCG) in the lab."),
    cfg.StrOpt("migration_uri_template", default="qemu+tcp://%(host)s/system",
               help="libvirt URI of a peer hypervisor, as seen from this host. "
                    "%(host)s is the destination agent's host name."),
    cfg.StrOpt("kernel_path",
               help="Optional kernel for direct kernel boot (lab guests). When unset, "
                    "guests boot from their disk."),
    cfg.StrOpt("initrd_path", help="Optional initrd for direct kernel boot."),
    cfg.StrOpt("kernel_cmdline", default="console=ttyS0 root=/dev/vda rw",
               help="Kernel command line for direct kernel boot."),
    cfg.StrOpt("nwfilter", default="clean-traffic",
               help="nwfilter referenced by every interface; its IP parameters list "
                    "every fixed IP of the interface. Empty disables filtering."),
    cfg.IntOpt("reconnect_interval", default=2, min=1,
               help="Seconds between attempts to reconnect to libvirtd."),
    cfg.IntOpt("shutdown_timeout", default=20, min=0,
               help="Seconds to wait for an ACPI shutdown before destroying a guest."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
