#!/bin/bash
# The lab's QEMU: the real qemu-system-x86_64 with the guest's main RAM 8 KiB larger.
#
# Why: Debian 12's QEMU 7.2 loses guest writes in a live migration under TCG. Its fast
# dirty-bitmap sync, taken for a RAM block whose size is a multiple of 256 KiB (every
# guest libvirt starts: it rounds memory to whole MiB), clears the dirty bits without
# resetting the TLB entries TCG filled, so a page written through them after it was
# sent is never sent again (fixed in QEMU 9.0 by 03bfc2188f). A size that is not a
# multiple of 256 KiB takes the slow path, which resets the TLB; docs/tcg-migration.md
# has the measurements. KVM guests are not affected, so this is the lab's business only.
#
# Each lab host bind-mounts this file over /usr/bin/qemu-system-x86_64 in its own mount
# namespace (host-init.sh) and the real binary on @REAL@
# (layout.QEMU_REAL_MOUNT). Both ends of a migration run
# it, so their RAM blocks stay the same size. libvirt's capability probes (no -m) pass
# through unchanged.
set -u
real=@REAL@
pad_kib=8
args=()
prev=
for a in "$@"; do
    orig=$a
    if [ "$prev" = "-m" ]; then
        if [[ $a =~ ^[0-9]+$ ]]; then                      # -m <MiB>
            a="$(( a * 1024 + pad_kib ))k"
        elif [[ $a =~ ^size=([0-9]+)k(.*)$ ]]; then        # -m size=<KiB>k,...
            a="size=$(( BASH_REMATCH[1] + pad_kib ))k${BASH_REMATCH[2]}"
        fi
    elif [ "$prev" = "-object" ] && [[ $a == *'"id":"pc.ram"'* ]] \
            && [[ $a =~ \"size\":([0-9]+) ]]; then
        n=${BASH_REMATCH[1]}
        a=${a/\"size\":$n/\"size\":$(( n + pad_kib * 1024 ))}
    fi
    args+=("$a")
    prev=$orig
done
exec -a "$0" "$real" "${args[@]}"
