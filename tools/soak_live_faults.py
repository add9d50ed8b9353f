#!/usr/bin/env python3
"""Soak: the live-migration fault matrix (tests/functional/test_live_migration_faults.py and
test_live_migration_stop.py) ``--runs`` times on the real stack; writes its figures
(cases x runs, seconds to settle after the fault cleared: max / median, what failed or
was lost) to docs/faults.md.  The suite runs each case once.

    COMPUTEAGENT_LAB_SLOT=<slot> .venv/bin/python tools/soak_live_faults.py --runs 3
"""
import argparse
import collections
import datetime
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = ["tests/functional/test_live_migration_faults.py",
         "tests/functional/test_live_migration_stop.py"]
LINE = re.compile(r"^(?:\.)?([a-z][a-z0-9:-]+): ends on the (\S+) \(\S+\), settled in ([0-9.]+)s")
LOG_DIR = os.environ.get("TMPDIR", "/tmp")    # each run's whole pytest output
RESULT = re.compile(r"^(PASSED|FAILED|ERROR) \S+::(\S+)")


def one_run(i):
    env = dict(os.environ, COMPUTEAGENT_KEEP_LAB="1")
    p = subprocess.run([sys.executable, "-m", "pytest", *TESTS, "-q", "-s", "-rA",
                        "-m", "realstack", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    log = os.path.join(LOG_DIR, "soak-live-faults-run%d.log" % i)
    with open(log, "w") as f:
        f.write(p.stdout + p.stderr)
    settled = {}
    failed = []
    for line in p.stdout.splitlines():
        m = LINE.match(line.strip())
        if m:
            settled[m.group(1)] = (m.group(2), float(m.group(3)))
        r = RESULT.match(line.strip())
        if r and r.group(1) != "PASSED":
            failed.append(r.group(2))
    print("run %d: rc %d, %d cases settled, failed: %s (output: %s)" % (
        i, p.returncode, len(settled), failed or "none", log))
    return settled, failed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "faults.md"))
    args = ap.parse_args()
    times = collections.defaultdict(list)
    owners = collections.defaultdict(collections.Counter)
    failures = []
    for i in range(1, args.runs + 1):
        settled, failed = one_run(i)
        for case, (owner, secs) in settled.items():
            times[case].append(secs)
            owners[case][owner] += 1
        failures += ["run %d: %s" % (i, f) for f in failed]
    lines = ["# Live-migration fault matrix (soak)", "",
             "`tools/soak_live_faults.py --runs %d`, %s UTC, on the lab (2 cores shared "
             "with other labs), TLS on every link. Modules: "
             "`tests/functional/test_live_migration_{faults,stop}.py` (each case once in the suite). "
             "Cases: `live-*:<step>` an agent SIGKILLed at that step ([debug] crash_at) "
             "and restarted; `broker-down:<step>` the broker stopped, 3 s, started "
             "again as the source makes its next peer call ([debug] pause_at holds it "
             "there); `broker-restart`, `dest-*`, `link-down-5s` a fault during the "
             "copy (capped at 32 MiB/s); the 3 SIGTERM cases (not in the table) only "
             "pass or fail. Points and caps are armed by SIGHUP (mutable options), not "
             "by restarts. Settled = seconds from the fault clearing "
             "until the guest runs on exactly one host, both records terminal and "
             "agreeing, no orphan dir/domain, data written before read back; then the "
             "guest's own GUESTCHECK and the next case migrates it again." % (
                 args.runs, datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")), "",
             "| case | runs | settled max s | settled median s | ended on |",
             "|---|---|---|---|---|"]
    for case in sorted(times):
        t = times[case]
        lines.append("| %s | %d | %.1f | %.1f | %s |" % (
            case, len(t), max(t), statistics.median(t),
            ", ".join("%s x%d" % kv for kv in sorted(owners[case].items()))))
    lines += ["", "Failed or lost: %s" % ("; ".join(failures) if failures else
                                          "nothing (every run of every case passed)"),
              ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
