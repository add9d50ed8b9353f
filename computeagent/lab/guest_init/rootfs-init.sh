#!/bin/busybox sh
# computeagent lab guest, stage 2 (/sbin/init on the root disk, PID 1).
# Prints "GUESTBOOT <uptime>" and "GUESTINFO cpus=<n> mem_kb=<k> disk_bytes=<b>"
# once, then once per round (about every second):
#   drop the page cache, verify every file of the base layer against
#   /etc/manifest.md5, execute a binary from the disk, append to a counter file
#   on the disk and sync; then exactly one line "GUESTCHECK <n> OK" or
#   "GUESTCHECK <n> FAIL <bad>", where <bad> counts failed files plus a wrong
#   manifest, a failed execution and a failed counter write.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /var/lib/guest 2>/dev/null

read up _ </proc/uptime
echo "GUESTBOOT $up"
# What the guest sees of its virtual hardware (resize tests compare it).
mem=0
while read k v _; do [ "$k" = "MemTotal:" ] && mem=$v; done </proc/meminfo
echo "GUESTINFO cpus=$(grep -c ^processor /proc/cpuinfo) mem_kb=$mem disk_bytes=$(($(cat /sys/block/vda/size) * 512))"

# Uptime in centiseconds (/proc/uptime has two decimals; no leading zeros = no octal).
centis() {
    local u
    read u _ </proc/uptime
    u=${u%.*}${u#*.}
    while [ "${u#0}" != "$u" ]; do u=${u#0}; done
    echo "${u:-0}"
}

# The network from the config drive, when there is one (issue 13; see guest-net).
[ -x /sbin/guest-net ] && /sbin/guest-net &

manifest=/etc/manifest.md5
n=0
while :; do
    n=$((n + 1))
    start=$(centis)
    echo 3 >/proc/sys/vm/drop_caches
    total=${GUEST_MANIFEST_COUNT:-$(wc -l <$manifest 2>/dev/null)}
    good=$(md5sum -c $manifest 2>/dev/null | grep -c ': OK$')
    bad=$((${total:-0} - ${good:-0}))
    [ "$bad" -ge 0 ] || bad=0
    if [ -n "$GUEST_MANIFEST_SHA256" ]; then
        set -- $(sha256sum $manifest 2>/dev/null)
        [ "$1" = "$GUEST_MANIFEST_SHA256" ] || bad=$((bad + 1))
    fi
    /usr/libexec/busybox-probe true 2>/dev/null || bad=$((bad + 1))
    read up _ </proc/uptime
    { echo "$n $up" >>/var/lib/guest/counter && sync; } 2>/dev/null \
        || bad=$((bad + 1))
    if [ "$bad" -eq 0 ]; then
        echo "GUESTCHECK $n OK"
    else
        echo "GUESTCHECK $n FAIL $bad"
    fi
    # One round per second, or a short pause when the check took longer than that.
    rest=$((100 - ($(centis) - start)))
    [ "$rest" -ge 20 ] || rest=20
    [ "$rest" -lt 100 ] && sleep "0.$(printf %02d "$rest")" || sleep 1
done
