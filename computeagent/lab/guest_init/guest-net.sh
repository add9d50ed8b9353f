#!/bin/busybox sh
# computeagent lab guest: the network from the config drive (started by /sbin/init).
# About every 2 s: mount the config drive (label config-2, the SCSI cdrom /dev/sr0)
# read-only, and when openstack/latest/network_data.json changed (first boot, or a new
# medium after add/remove_fixed_ip), configure exactly its addresses on the interface
# whose MAC the link names, and print one line per configuration:
#   GUESTNET <gen> <ifname> <mac> <addr/prefix>,<addr/prefix>,...
#   GUESTNETERROR <reason>
# Then, if the drive has openstack/latest/user_data, run it as a shell script with the
# round number as $1 (the lab's tests send their probe packets from there).
export PATH=/bin
mnt=/tmp/configdrive
mkdir -p $mnt
last=
gen=0
round=0

# network_data.json as the agent writes it (sorted keys, indent 2, one pair a line)
# -> "L <id> <mac>" per link and "A <link> <ip> <prefix> <type>" per network entry.
parse() {
    awk '
    /^  "links": \[/ { sec = "L"; next }
    /^  "networks": \[/ { sec = "A"; next }
    /^  "services"/ { sec = "" }
    function val(line) { sub(/^[^:]*: */, "", line); gsub(/[",]/, "", line); return line }
    sec == "L" && /^      "id":/ { id = val($0) }
    sec == "L" && /^      "ethernet_mac_address":/ { mac = val($0) }
    sec == "L" && /^    }/ { print "L", id, mac; id = mac = "" }
    sec == "A" && /^      "ip_address":/ { ip = val($0) }
    sec == "A" && /^      "link":/ { link = val($0) }
    sec == "A" && /^      "prefix":/ { pfx = val($0) }
    sec == "A" && /^      "type":/ { typ = val($0) }
    sec == "A" && /^    }/ { print "A", link, ip, pfx, typ; ip = link = pfx = typ = "" }
    ' "$1"
}

ifname_of() {   # MAC -> interface name
    for d in /sys/class/net/*; do
        [ "$(cat $d/address 2>/dev/null)" = "$1" ] && { echo "${d##*/}"; return; }
    done
}

configure() {
    gen=$((gen + 1))
    parse "$1" >/tmp/netplan
    while read kind id mac; do
        [ "$kind" = L ] || continue
        ifc=$(ifname_of "$mac")
        if [ -z "$ifc" ]; then
            echo "GUESTNETERROR no interface with MAC $mac"
            continue
        fi
        ip link set "$ifc" up
        ip -4 addr flush dev "$ifc"
        ip -6 addr flush dev "$ifc" scope global
        addrs=
        while read k2 link ip pfx typ; do
            [ "$k2" = A ] && [ "$link" = "$id" ] || continue
            if [ "$typ" = ipv6 ]; then
                ip -6 addr add "$ip/$pfx" dev "$ifc"
            else
                ip addr add "$ip/$pfx" dev "$ifc"
            fi && addrs="$addrs${addrs:+,}$ip/$pfx"
        done </tmp/netplan
        echo "GUESTNET $gen $ifc $mac ${addrs:--}"
    done </tmp/netplan
}

while :; do
    round=$((round + 1))
    if [ -b /dev/sr0 ] && mount -t iso9660 -o ro /dev/sr0 $mnt 2>/dev/null; then
        nd=$mnt/openstack/latest/network_data.json
        sum=$(md5sum "$nd" 2>/dev/null)
        sum=${sum%% *}
        if [ -n "$sum" ] && [ "$sum" != "$last" ]; then
            configure "$nd"
            last=$sum
        fi
        if [ -f $mnt/openstack/latest/user_data ]; then
            cp $mnt/openstack/latest/user_data /tmp/user_data
        else
            rm -f /tmp/user_data
        fi
        umount $mnt
    fi
    [ -f /tmp/user_data ] && sh /tmp/user_data "$round" 2>&1
    sleep 2
done
