#!/usr/bin/env python3
"""Live migration of a busy guest: the agent's convergence policy against bare
``virsh migrate`` with the same flags (issue 11). Output: docs/benchmarks.md
(section "Convergence") and docs/benchmarks-convergence.json.

The lab guest runs /usr/libexec/dirtier (RATE MiB/s over a 24 MiB working set);
every migration is capped at 16 MiB/s. For each dirty rate (0, 1x, 2x the cap), one
run of each, alternating:
  agent       computeagent live_migrate, default policy ([migration] defaults +
              bandwidth_mib = 16): downtime steps to 500 ms, auto-converge 50/+25
  virsh-ac    bare virsh migrate, the agent's flags: --live --p2p --copy-storage-inc
              --persistent --undefinesource --migrate-disks vda --bandwidth 16
              --auto-converge --auto-converge-initial 50 --auto-converge-increment 25
              (libvirt's default max downtime, 300 ms)
  virsh-plain the same without auto-converge (plain pre-copy)
A bare run that is still going at the agent's deadline (75 s for this guest) is
aborted (domjobabort): "converged: no". Bare runs get a destination prepared by
hand (base + overlay + config drive, as pre_live_migration makes them); their time
starts at ``virsh migrate``; the agent's at the cast (it includes its preparation
and the destination's chain check).

    COMPUTEAGENT_LAB_SLOT=2 .venv/bin/python tools/convergence_benchmark.py
"""
import base64
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import libvirt  # noqa: E402

from computeagent.lab import console as lconsole  # noqa: E402
from computeagent.lab import guest  # noqa: E402
from computeagent.lab import lab as labmod  # noqa: E402
from tests.functional import conftest as fc  # noqa: E402

A, B = "hosta", "hostb"
BANDWIDTH = 16
WORKING_SET = 24
DEADLINE = 75
RATES = (0, BANDWIDTH, 2 * BANDWIDTH)
INSTANCES = "/var/lib/computeagent/instances"
TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 ** 2


def say(*a):
    print(*a, flush=True)


class Bench:
    def __init__(self):
        self.artifacts = guest.build_guest()
        extra = {k: dict(v) for k, v in fc.AGENT_EXTRA_CONF.items()}
        extra["libvirt"].update(kernel_path=self.artifacts.kernel,
                                initrd_path=self.artifacts.initrd,
                                kernel_cmdline=self.artifacts.cmdline)
        extra["migration"]["bandwidth_mib"] = str(BANDWIDTH)
        self.lab = labmod.Lab()
        self.lab.up(hosts=3, agents=True, extra_conf=extra)
        # the lab may have been up with other options: restart A with the cap
        self.lab.stop_agent(A)
        self.lab.start_agent(A, extra_conf={"migration": {"bandwidth_mib": str(BANDWIDTH)}})
        from oslo_config import cfg
        from computeagent.rpc import api
        cfg.CONF([], project="computeagent", default_config_files=[])
        self.agent = api.ComputeAgentAPI(api.get_transport(
            cfg.CONF, url=self.lab.transport_url(from_root=True)), timeout=30)
        self.image = fc.publish_image(
            self.lab, self.artifacts.base_raw,
            "guest-%s.raw" % self.artifacts.base_sha256[:16], "raw")
        self.ctxt = {"request_id": "req-bench"}

    def close(self):
        self.lab.stop_agent(A)
        self.lab.start_agent(A, extra_conf={})

    def console(self, host, uuid):
        return fc.host_file_text(self.lab, host, "%s/%s/console.log" % (INSTANCES, uuid))

    def spawn(self, rate):
        ud = lconsole.dirtier_user_data(rate, WORKING_SET) if rate else "true\n"
        inst = fc.make_instance(self.image, name="bench", config_drive=True,
                                user_data=base64.b64encode(ud.encode()).decode())
        self.agent.spawn(self.ctxt, A, inst)
        fc.wait_state(self.agent, self.ctxt, A, inst["uuid"], "ACTIVE")
        uuid = inst["uuid"]
        guest.wait_for_check(lambda: self.console(A, uuid), timeout=90)
        measured = None
        if rate:
            def dirty():
                lines = lconsole.parse_dirty(self.console(A, uuid))
                return lines[-1] if len(lines) >= 3 else None
            measured = fc.wait_for(dirty, timeout=60, what="dirtier")[2]
        return uuid, measured

    def guest_ok(self, host, uuid, rate):
        try:
            ok = guest.wait_for_check(lambda: self.console(host, uuid), timeout=60).ok
            if rate:
                lines = fc.wait_for(lambda: lconsole.parse_dirty(self.console(host, uuid))
                                    or None, timeout=30, what="dirtier")
                ok = ok and all(x[1] for x in lines)
        except Exception as e:
            say("   guest check on %s failed: %s" % (host, e))
            ok = False
        if not ok:
            say("   console tail on %s:\n%s" % (host, self.console(host, uuid)[-1500:]))
        return ok

    def cleanup(self, uuid):
        for host in (A, B):
            name = "instance-" + uuid
            fc.virsh(self.lab, host, "destroy", name, check=False)
            fc.virsh(self.lab, host, "undefine", name, check=False)
        fc.delete_everywhere(self.agent, self.ctxt, uuid)
        for host in (A, B):
            fc.host_run(self.lab, host, ["rm", "-rf", "%s/%s" % (INSTANCES, uuid)],
                        check=False)

    # ------------------------------------------------------------------ agent
    def run_agent(self, rate):
        uuid, measured = self.spawn(rate)
        try:
            mid = "bench-" + uuidlib.uuid4().hex[:10]
            t0 = time.monotonic()
            self.agent.live_migrate(self.ctxt, A, uuid, B, mid)
            mig = fc.wait_for(lambda: (lambda m: m if m["status"] in (
                "completed", "failed", "cancelled") else None)(
                self.agent.get_migration(self.ctxt, A, mid)), timeout=300,
                interval=0.1, what="migration end")
            took = time.monotonic() - t0
            done = mig["status"] == "completed"
            conv = mig.get("convergence") or {}
            return {"who": "agent", "rate": rate, "dirtier_mib_s": measured,
                    "seconds": round(took, 1), "converged": done,
                    "bytes": mig["data_processed"], "downtime_ms": mig["downtime_ms"],
                    "guest_ok": self.guest_ok(B if done else A, uuid, rate),
                    "steps": [d["what"] for d in conv.get("decisions", [])],
                    "throttle_pct": conv.get("throttle_pct"),
                    "error": mig["error"]}
        finally:
            self.cleanup(uuid)

    # ------------------------------------------------------------------- bare
    def prepare_dest(self, uuid):
        """What pre_live_migration makes: base (B's cache has it after an agent
        run), overlay on it with the same virtual size, the same config drive."""
        base = "%s/_base/%s" % (INSTANCES, hashlib.sha1(self.image["id"].encode())
                                .hexdigest())
        fc.host_run(self.lab, B, ["test", "-f", base])
        info = fc.backing_chain(self.lab, A, "%s/%s/disk" % (INSTANCES, uuid))[0]
        src = os.path.join(self.lab.host(A)["instances_dir"], uuid)
        dst = os.path.join(self.lab.host(B)["instances_dir"], uuid)
        os.makedirs(dst, exist_ok=True)
        with open(os.path.join(src, "disk.config"), "rb") as f, \
                open(os.path.join(dst, "disk.config"), "wb") as g:
            g.write(f.read())
        fc.host_run(self.lab, B, ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                                  "-b", base, "%s/%s/disk" % (INSTANCES, uuid),
                                  str(info["virtual-size"])])

    def run_bare(self, rate, who):
        uuid, measured = self.spawn(rate)
        name = "instance-" + uuid
        try:
            self.prepare_dest(uuid)
            argv = ["virsh", "-c", self.lab.libvirt_uri(A), "migrate", "--live", "--p2p",
                    "--copy-storage-inc", "--persistent", "--undefinesource",
                    "--migrate-disks", "vda", "--bandwidth", str(BANDWIDTH)]
            if who == "virsh-ac":
                argv += ["--auto-converge", "--auto-converge-initial", "50",
                         "--auto-converge-increment", "25"]
            argv += [name, "qemu+tcp://%s/system" % B]
            t0 = time.monotonic()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
            aborted = False
            while proc.poll() is None:
                time.sleep(0.1)
                if not aborted and time.monotonic() - t0 > DEADLINE:
                    fc.virsh(self.lab, A, "domjobabort", name, check=False)
                    aborted = True
            took = time.monotonic() - t0
            _out, err = proc.communicate()
            done = proc.returncode == 0
            stats = {}
            host = B if done else A
            try:
                conn = libvirt.open(self.lab.libvirt_uri(host))
                stats = conn.lookupByName(name).jobStats(
                    libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
                conn.close()
            except libvirt.libvirtError:
                pass
            return {"who": who, "rate": rate, "dirtier_mib_s": measured,
                    "seconds": round(took, 1), "converged": done,
                    "bytes": stats.get("data_processed"),
                    "downtime_ms": stats.get("downtime") if done else None,
                    "guest_ok": self.guest_ok(host, uuid, rate),
                    "error": None if done else (err.strip()[-200:] or "aborted")}
        finally:
            self.cleanup(uuid)


def write_docs(results, started):
    path = os.path.join(TOP, "docs", "benchmarks-convergence.json")
    with open(path, "w") as f:
        json.dump({"date": started, "bandwidth_mib_s": BANDWIDTH,
                   "working_set_mib": WORKING_SET, "deadline_s": DEADLINE,
                   "results": results}, f, indent=1)
    lines = ["| dirty MiB/s (measured) | run | converged | total s | MiB sent | "
             "downtime ms | guest check | steps |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| %s (%s) | %s | %s | %s | %s | %s | %s | %s |" % (
            r["rate"], r["dirtier_mib_s"] if r["dirtier_mib_s"] is not None else "-",
            r["who"], "yes" if r["converged"] else "no", r["seconds"],
            "%.0f" % (r["bytes"] / MiB) if r.get("bytes") else "-",
            r["downtime_ms"] if r["downtime_ms"] is not None else "-",
            "OK" if r["guest_ok"] else "FAIL", ", ".join(
                sorted(set(r.get("steps") or []))) or "-"))
    table = "\n".join(lines)
    md = os.path.join(TOP, "docs", "benchmarks.md")
    text = open(md).read()
    start, end = "<!-- convergence:start -->", "<!-- convergence:end -->"
    body = ("%s\n## Convergence of a busy guest (issue 11)\n\n"
            "`tools/convergence_benchmark.py`, %s: lab guest (96 MiB, TCG, 1 vCPU), "
            "migration capped at %d MiB/s, dirtier over %d MiB, bare runs aborted at "
            "the agent's %d s deadline; one run each, alternating "
            "(docs/benchmarks-convergence.json).\n\n%s\n%s"
            % (start, started, BANDWIDTH, WORKING_SET, DEADLINE, table, end))
    if start in text:
        text = text[:text.index(start)] + body + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    with open(md, "w") as f:
        f.write(text)


def main():
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    bench = Bench()
    results = []
    try:
        for rate in RATES:
            for who in ("agent", "virsh-ac", "virsh-plain"):
                say("== rate %d MiB/s: %s" % (rate, who))
                r = bench.run_agent(rate) if who == "agent" else bench.run_bare(rate, who)
                say("   %s" % json.dumps(r))
                results.append(r)
                write_docs(results, started)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
