#!/bin/sh
# computeagent lab guest, stage 1 (initramfs /init, PID 1).
# Loads the virtio modules, mounts the root disk (ext4) and switch_root's into its
# /sbin/init. On any failure it reports GUESTERROR once and then one failing
# GUESTCHECK line per second, so a watcher sees a FAIL instead of a silent console.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

root=/dev/vda
rootfstype=ext4
rootflags=rw
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root=${arg#root=} ;;
        rootfstype=*) rootfstype=${arg#rootfstype=} ;;
        rootflags=*) rootflags=${arg#rootflags=} ;;
    esac
done

fail() {
    echo "GUESTERROR stage1: $*"
    n=0
    while :; do
        n=$((n + 1))
        echo "GUESTCHECK $n FAIL @MANIFEST_COUNT@"
        sleep 1
    done
}

for m in @MODULES@; do
    insmod "/lib/modules/$m.ko" || fail "insmod $m"
done

i=0
while [ ! -b "$root" ]; do
    i=$((i + 1))
    [ "$i" -le 100 ] || fail "root device $root did not appear"
    sleep 0.1
done

mount -t "$rootfstype" -o "$rootflags" "$root" /newroot || fail "cannot mount $root"
[ -x /newroot/sbin/init ] || fail "no executable /sbin/init on $root"

# What the root disk's init checks the manifest against (not stored on the disk).
export GUEST_MANIFEST_SHA256=@MANIFEST_SHA256@
export GUEST_MANIFEST_COUNT=@MANIFEST_COUNT@

umount /proc /sys /dev
exec switch_root /newroot /sbin/init
