#!/usr/bin/env python3
"""What one ``qemu-img`` call costs the agent, by the way it is started (issue 14).

    .venv/bin/python tools/bench_qemu_img_calls.py [--calls 30] [--out docs/benchmarks.md]

Runs ``qemu-img info`` of a small qcow2 overlay under util-linux ``prlimit`` (the
agent's limits) from a process shaped like a running agent (``--rss-mib`` of touched
memory, ``--threads`` idle threads), alternating:

* ``processutils``: ``oslo_concurrency.processutils.execute`` (its ``preexec_fn``
  makes Python fork() the whole process);
* ``agent``: ``computeagent.images.qemu_img._execute`` (``subprocess.run``, which
  can vfork());
* ``oslo prlimit=``: processutils with oslo's own ``prlimit=`` (a Python
  interpreter per call), for reference.

No lab needed. The figures go between markers in ``--out``.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

BEGIN = "<!-- bench_qemu_img_calls: begin -->"
END = "<!-- bench_qemu_img_calls: end -->"
MiB = 1024 ** 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=30)
    p.add_argument("--rss-mib", type=int, default=120)
    p.add_argument("--threads", type=int, default=20)
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    args = p.parse_args()

    from computeagent import threads
    threads.use_native_threads()
    from oslo_concurrency import processutils
    from computeagent.conf import CONF
    from computeagent.images import qemu_img
    CONF([], project="computeagent", default_config_files=[])

    ballast = []
    for _ in range(args.rss_mib):
        b = bytearray(MiB)
        b[::4096] = b"x" * len(b[::4096])      # touched: really resident
        ballast.append(b)
    stop = threading.Event()
    idle = [threading.Thread(target=stop.wait, daemon=True) for _ in range(args.threads)]
    for t in idle:
        t.start()

    work = tempfile.mkdtemp(prefix="bench-qemu-img-")
    base, disk = os.path.join(work, "base.raw"), os.path.join(work, "disk")
    with open(base, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base,
                    disk, "1G"], check=True)
    info = ["info", "-f", "qcow2", "--force-share", "--output=json", disk]
    limits = processutils.ProcessLimits(
        address_space=CONF.qemu_img.address_space_limit_mb * MiB,
        cpu_time=CONF.qemu_img.cpu_time_limit)
    ways = {
        "processutils": lambda: processutils.execute(*qemu_img._limits(), "qemu-img",
                                                     *info),
        "agent": lambda: qemu_img._execute(info),
        "oslo prlimit=": lambda: processutils.execute("qemu-img", *info, prlimit=limits),
    }
    res = {k: [] for k in ways}
    for _ in range(args.calls):
        for k, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            res[k].append(time.perf_counter() - t0)
    stop.set()
    for f in (disk, base):
        os.unlink(f)
    os.rmdir(work)

    rss = [line for line in open("/proc/self/status") if line.startswith("VmRSS")]
    med = {k: statistics.median(v) * 1000 for k, v in res.items()}
    p90 = {k: sorted(v)[int(len(v) * 0.9)] * 1000 for k, v in res.items()}
    lines = [BEGIN, "## One qemu-img call, by the way it is started (issue 14)", "",
             "Produced by `tools/bench_qemu_img_calls.py --calls %d` on %s: `qemu-img "
             "info` of a qcow2 overlay under `prlimit(1)`, from a process shaped like "
             "a running agent (%s, %d idle threads), alternating."
             % (args.calls, datetime.datetime.now(datetime.timezone.utc)
                .strftime("%Y-%m-%d %H:%M UTC"),
                rss[0].split(":")[1].strip() if rss else "?", args.threads), "",
             "| started by | median | p90 |", "|---|---|---|"]
    for k in ways:
        lines.append("| %s | %.1f ms | %.1f ms |" % (k, med[k], p90[k]))
    lines += ["", "`processutils.execute` passes a `preexec_fn`, so Python fork()s the "
              "whole process (page tables of every mapping); `subprocess.run` without "
              "one can vfork(). The agent uses the second since this change "
              "(`computeagent/images/qemu_img.py`).", END]
    text = "\n".join(lines) + "\n"
    print(text)
    doc = open(args.out).read() if os.path.exists(args.out) else ""
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) + 1:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(args.out, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
