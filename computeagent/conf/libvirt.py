from oslo_config import cfg

GROUP = "libvirt"

opts = [
    cfg.StrOpt("connection_uri", default="qemu:///system",
               help="libvirt URI of this host's hypervisor."),
    cfg.StrOpt("virt_type", default="kvm", choices=["kvm", "qemu"],
               help="Domain type: kvm on real hypervisors, qemu (TCG) in the lab."),
    cfg.StrOpt("migration_uri_template", default="qemu+tls://%(host)s/system",
               help="libvirt URI of a peer hypervisor, as seen from this host. "
                    "%(host)s is the destination agent's host name. Used for live "
                    "migration, storage-volume transfers (bases, resize overlays, "
                    "config drives) and asking a peer where a guest runs. The default "
                    "is TLS with this host's client certificate (docs/security.md); "
                    "qemu+tcp:// (no authentication, no encryption) needs "
                    "allow_insecure_transport."),
    cfg.StrOpt("pkipath",
               help="Directory with this host's client certificate set for "
                    "qemu+tls peer URIs (cacert.pem, clientcert.pem, clientkey.pem), "
                    "added to the URI as ?pkipath=. Unset: libvirt's defaults "
                    "(/etc/pki/CA/cacert.pem, /etc/pki/libvirt/clientcert.pem, "
                    "/etc/pki/libvirt/private/clientkey.pem)."),
    cfg.BoolOpt("allow_insecure_transport", default=False,
                help="Allow a peer URI without authentication or encryption "
                     "(qemu+tcp://) and unencrypted migration streams ([migration] "
                     "tls = false). Anyone who reaches such a libvirtd is root on "
                     "it and reads guest memory and disks on the wire: labs only. "
                     "Without it the agent refuses to start with such settings; with "
                     "it, it logs a WARNING at every start."),
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
    cfg.IntOpt("console_log_max_bytes", default=1048576, min=0,
               help="Largest size of an instance's console.log (the guest's serial "
                    "console, written by QEMU).  Checked with the power-state sync "
                    "(sync_power_state_interval): a larger file is cut to its newest "
                    "half (from a line start) behind one '[computeagent: console log "
                    "truncated ...]' line, so a guest cannot fill the hypervisor's "
                    "disk.  Between two checks the file may exceed the cap by what the "
                    "guest writes meanwhile.  0: unbounded."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
