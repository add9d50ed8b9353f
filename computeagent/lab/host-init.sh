#!/bin/sh
# Init of one lab hypervisor.  computeagent.lab starts it as
#
#   unshare --mount --uts --propagation private \
#       nsenter --net=/run/netns/calab-<name> -- host-init.sh <name> <host dir> <subreaper> \
#       [<qemu wrapper>]
#
# in a new session, so this process already lives in the host's own network namespace
# and in fresh (private) mount and UTS namespaces.  It gives the host its own view of the
# machine (hostname, /etc/libvirt, libvirt's run/state/log/cache dirs, /etc/hosts,
# /etc/passwd + /etc/group with a libvirt-qemu user, and /var/lib/computeagent), then
# replaces itself by the subreaper running libvirtd.  Its PID stays the host's PID for
# `nsenter -t <pid> -m -u -n` (agents, host_exec) while libvirtd is restarted below it.
#
# The mount points must exist in the root file system; computeagent.lab creates them.
set -eu

name=$1
hostdir=$2
subreaper=$3
qemu_wrapper=${4:-}

echo "host-init[$$]: $name, host dir $hostdir"

# unshare --propagation private did this already; be explicit, nothing may leak back.
mount --make-rprivate /

hostname "$name"

bind() {
    # bind <source in host dir> <target>
    mount --bind "$hostdir/$1" "$2"
}

bind etc/libvirt         /etc/libvirt
bind etc/pki             /etc/pki
bind run/libvirt         /run/libvirt
bind var/lib/libvirt     /var/lib/libvirt
bind var/log/libvirt     /var/log/libvirt
bind var/cache/libvirt   /var/cache/libvirt
bind etc/hosts           /etc/hosts
bind etc/passwd          /etc/passwd
bind etc/group           /etc/group
bind agent               /var/lib/computeagent

# This mount namespace was copied from the root one, with a reference to every lab
# network namespace that existed at that moment; drop them so that a deleted namespace
# is really freed.  The host's own one is held by this process anyway.
if [ -d /run/netns ]; then
    for ns in /run/netns/*; do
        [ -e "$ns" ] || continue
        umount "$ns" 2>/dev/null || true
    done
fi

# The lab's QEMU (qemu-tcg-ram-pad.sh: guest RAM 8 KiB larger, so that QEMU 7.2 keeps
# TCG's dirty tracking right during live migration): the real binary on the path the
# wrapper execs, the wrapper in its place, in this host's mount namespace only.
if [ -n "$qemu_wrapper" ]; then
    mount --bind /usr/bin/qemu-system-x86_64 \
        "$(sed -n 's/^real=//p' "$qemu_wrapper")"
    mount --bind "$qemu_wrapper" /usr/bin/qemu-system-x86_64
fi

ip link set lo up

echo "host-init[$$]: mounts done, starting libvirtd"
exec "$subreaper" -k -- /usr/sbin/libvirtd --listen \
    -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
