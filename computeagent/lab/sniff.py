"""What reaches a lab bridge: ICMP and ARP frames seen on an interface for a while.

Run inside a host namespace (``lab.host_exec``); an AF_PACKET socket on the bridge sees
frames after the bridge's ebtables (nwfilter) hooks on the guest's port, so a frame the
nwfilter dropped never shows here.

    python -m computeagent.lab.sniff IFACE SECONDS     # JSON list of frames
    python -m computeagent.lab.sniff --grep IFACE STOPFILE MAXSECONDS IP,IP HEX...
        # which byte patterns crossed in clear in TCP payloads (issue 9 capture test)
"""
import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
MAX_FRAMES = 10000


def _mac(b):
    return ":".join("%02x" % x for x in b)


def sniff(iface, seconds):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    frames = []
    deadline = time.monotonic() + seconds
    try:
        while len(frames) < MAX_FRAMES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not select.select([s], [], [], left)[0]:
                continue
            data, addr = s.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            dst, src, etype = data[0:6], data[6:12], struct.unpack("!H", data[12:14])[0]
            f = {"src_mac": _mac(src), "dst_mac": _mac(dst), "ethertype": "%04x" % etype}
            if etype == 0x0800 and len(data) >= 34:
                f.update(proto=data[23], src_ip=socket.inet_ntoa(data[26:30]),
                         dst_ip=socket.inet_ntoa(data[30:34]))
            elif etype == 0x0806 and len(data) >= 42:
                f.update(arp_op=struct.unpack("!H", data[20:22])[0],
                         src_ip=socket.inet_ntoa(data[28:32]),
                         dst_ip=socket.inet_ntoa(data[38:42]))
            else:
                continue
            frames.append(f)
    finally:
        s.close()
    return frames


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--grep":
        return main_grep(argv[1:])
    json.dump(sniff(argv[0], float(argv[1])), sys.stdout)
    sys.stdout.write("\n")
    return 0



def grep_tcp(iface, patterns, stop_file, max_seconds, hosts=None):
    """Capture the TCP payloads on ``iface`` until ``stop_file`` exists (or
    ``max_seconds``) and report which of ``patterns`` (bytes) crossed in clear,
    searched per flow across segment boundaries.  ``hosts``: only packets between
    these IPv4 addresses.  Returns {"found": [bool per pattern], "bytes": n,
    "packets": n, "flows": n}."""
    import os
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # SO_RCVBUF is capped at net.core.rmem_max (~208 KiB): a busy 2-core machine
    # then drops whole bursts of the migration stream before this loop reads them
    # (a marker was missed once that way). As root, SO_RCVBUFFORCE takes 64 MiB.
    try:
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 64 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((iface, 0))
    keep = max(len(p) for p in patterns) - 1
    tails = {}
    found = [False] * len(patterns)
    nbytes = npackets = 0
    deadline = time.monotonic() + max_seconds
    try:
        while time.monotonic() < deadline:
            if not select.select([s], [], [], 0.2)[0]:
                if os.path.exists(stop_file):
                    break
                continue
            data = s.recv(262144)
            if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != 6:
                continue
            ihl = (data[14] & 0x0F) * 4
            src, dst = data[26:30], data[30:34]
            if hosts and not (socket.inet_ntoa(src) in hosts
                              and socket.inet_ntoa(dst) in hosts):
                continue
            tcp = 14 + ihl
            doff = (data[tcp + 12] >> 4) * 4
            payload = data[tcp + doff:]
            if not payload:
                continue
            key = (src, dst, data[tcp:tcp + 4])
            buf = tails.get(key, b"") + payload
            for i, p in enumerate(patterns):
                if not found[i] and p in buf:
                    found[i] = True
            tails[key] = buf[-keep:] if keep else b""
            nbytes += len(payload)
            npackets += 1
    finally:
        s.close()
    return {"found": found, "bytes": nbytes, "packets": npackets, "flows": len(tails)}


def main_grep(argv):
    """python -m computeagent.lab.sniff --grep IFACE STOPFILE MAXSECONDS HOSTS HEX..."""
    iface, stop_file, seconds, hosts = argv[0], argv[1], float(argv[2]), argv[3]
    patterns = [bytes.fromhex(h) for h in argv[4:]]
    out = grep_tcp(iface, patterns, stop_file, seconds,
                   hosts=set(hosts.split(",")) if hosts else None)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
