#!/usr/bin/env python3
"""Does a TCG live migration carry the guest's RAM over intact?  Bare QEMU, no
libvirt, no agent: the lab's guest boots under TCG, migrates over loopback TCP to a
second QEMU started with ``-S`` (it stays paused), and once the migration completes
both copies are paused; their RAM must then be byte for byte the same.  Every 4 KiB
page that differs is an update the migration lost.

    .venv/bin/python tools/probe_tcg_migration.py --rounds 5 --out docs/tcg-migration-probe.md

Rounds alternate "early" (migration starts 1 s after QEMU starts, while the kernel
boots), "late" (after the guest's first GUESTCHECK line and 10 s more) and the
control "paused" (as late, but the source is paused before the migration starts, so
nothing can write during it: the comparison itself must then find 0).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from computeagent.lab import guest  # noqa: E402

PAGE = 4096
# legacy VGA window and option ROMs: not RAM the guest writes through its TLB
SKIP = (0xA0000, 0x100000)


class QMP:
    def __init__(self, path, timeout=60):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rw")
        self._read()                                  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            msg = json.loads(self.file.readline())
            if "event" not in msg:
                return msg

    def cmd(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError("%s: %s" % (name, reply["error"]))
        return reply.get("return")

    def close(self):
        self.sock.close()


def differing_pages(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        da, db = fa.read(), fb.read()
    out = []
    for off in range(0, min(len(da), len(db)), PAGE):
        if SKIP[0] <= off < SKIP[1]:
            continue
        if da[off:off + PAGE] != db[off:off + PAGE]:
            out.append(off)
    return out


def one_round(art, work, mode, port, bandwidth_mib, append="", memory_kib=96 * 1024):
    disk = guest.create_overlay(art, os.path.join(work, "disk.qcow2"), 1 << 30)
    drive = "file.locking=off"
    procs = []
    try:
        argv_src = guest.qemu_argv(art, disk, os.path.join(work, "src.log"),
                                   qmp_socket=os.path.join(work, "src.qmp"),
                                   extra_append=append)
        argv_dst = guest.qemu_argv(art, disk, os.path.join(work, "dst.log"),
                                   qmp_socket=os.path.join(work, "dst.qmp"),
                                   extra_append=append)
        for argv in (argv_src, argv_dst):
            i = argv.index("-drive") + 1
            argv[i] += "," + drive
            argv[argv.index("-m") + 1] = "%dK" % memory_kib
        argv_dst += ["-S", "-incoming", "tcp:127.0.0.1:%d" % port]
        t0 = time.monotonic()
        procs.append(subprocess.Popen(argv_src, stdin=subprocess.DEVNULL))
        procs.append(subprocess.Popen(argv_dst, stdin=subprocess.DEVNULL))
        src, dst = QMP(os.path.join(work, "src.qmp")), QMP(os.path.join(work, "dst.qmp"))
        if mode == "early":
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        else:
            deadline = time.monotonic() + 120
            while not guest.parse_console(_text(os.path.join(work, "src.log"))):
                if time.monotonic() > deadline:
                    raise RuntimeError("no GUESTCHECK on the source")
                time.sleep(0.2)
            time.sleep(10)
        started_at = time.monotonic() - t0
        if mode == "paused":
            src.cmd("stop")
        if bandwidth_mib:
            src.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth_mib << 20})
        src.cmd("migrate", uri="tcp:127.0.0.1:%d" % port)
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.05)
        if info["status"] != "completed":
            raise RuntimeError("migration %s" % info)
        while dst.cmd("query-migrate").get("status") not in ("completed", None):
            time.sleep(0.05)
        src.cmd("pmemsave", val=0, size=memory_kib << 10, filename=os.path.join(work, "src.ram"))
        dst.cmd("pmemsave", val=0, size=memory_kib << 10, filename=os.path.join(work, "dst.ram"))
        diff = differing_pages(os.path.join(work, "src.ram"), os.path.join(work, "dst.ram"))
        ram = info.get("ram", {})
        return {"mode": mode, "started_s": round(started_at, 1),
                "total_ms": info.get("total-time"), "iterations": ram.get("dirty-sync-count"),
                "differing_pages": len(diff),
                "first": ["0x%x" % o for o in diff[:4]]}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds per mode")
    ap.add_argument("--bandwidth-mib", type=int, default=32,
                    help="migration bandwidth cap (MiB/s); 32 is about what TLS gets here")
    ap.add_argument("--memory-kib", type=int, default=96 * 1024,
                    help="guest RAM; not a multiple of 256 KiB makes QEMU 7.2 sync the"
                         " dirty bitmap page by page (the slow path, which resets the TLB)")
    ap.add_argument("--port", type=int, default=48123)
    ap.add_argument("--append", default="", help="extra guest kernel arguments")
    ap.add_argument("--out", help="markdown file for the table")
    args = ap.parse_args()
    art = guest.build_guest()
    version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[0]
    rows = []
    modes = ("early", "late", "paused")
    for i in range(args.rounds * len(modes)):
        mode = modes[i % len(modes)]
        work = tempfile.mkdtemp(prefix="tcgprobe-")
        try:
            row = one_round(art, work, mode, args.port, args.bandwidth_mib, args.append,
                            args.memory_kib)
        except Exception as exc:              # a round that cannot run says why
            row = {"mode": mode, "error": str(exc)}
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = ["# TCG live migration: RAM compared after completion", "",
             "`tools/probe_tcg_migration.py --rounds %d --bandwidth-mib %d --memory-kib %d`;"
             " %s; 1 vCPU, TCG. A differing page is a guest write the migration lost."
             % (args.rounds, args.bandwidth_mib, args.memory_kib, version), "",
             "| round | mode | started at (s) | migration (ms) | dirty syncs | differing pages |",
             "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        if "error" in r:
            lines.append("| %d | %s | error: %s | | | |" % (i, r["mode"], r["error"]))
        else:
            lines.append("| %d | %s | %s | %s | %s | %d |" % (
                i, r["mode"], r["started_s"], r["total_ms"], r["iterations"],
                r["differing_pages"]))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
