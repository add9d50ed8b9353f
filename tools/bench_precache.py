#!/usr/bin/env python3
"""Cold image pre-cache vs curl, and qemu-img's per-call limit cost (issue 14).

    COMPUTEAGENT_LAB_SLOT=N .venv/bin/python tools/bench_precache.py [--runs 3] \
        [--host hostc] [--out docs/benchmarks.md]

Uses the lab of the slot (brought up with 3 hosts if it is not up). For a 64 MiB
and a 1 GiB base of random bytes (no holes: the worst case for hash and disk), in
the same host, alternating, each run:

- agent: ``cache_images`` cast of a never-seen image id -> ``get_image_cache``
  shows ``cached`` (polled every 100 ms); the agent downloads, hashes (sha256),
  writes, fsyncs, inspects (``qemu-img info``), writes the sidecar and renames;
- ``curl -o F`` of the same URL; ``curl -o F && sha256sum F``;
  ``curl -o F && sync F`` (curl plus the one fsync the agent does);

timed inside the host with ``date +%s%N``. Then ``qemu-img info`` per call through
oslo's ``prlimit=`` (a Python interpreter per call) vs util-linux ``prlimit(1)``
vs no limits. Writes the section between the markers in ``--out`` and
``<out dir>/benchmarks-precache.json``. Nothing asserts a timing.
"""
import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid as uuidlib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

MiB = 1024 ** 2
BEGIN = "<!-- bench_precache: begin -->"
END = "<!-- bench_precache: end -->"
SCRATCH = "/var/lib/computeagent/instances/bench-curl.raw"


def med(v):
    return statistics.median(v) if v else float("nan")


MEM_DIR = "bench-mem"   # a tmpfs under the image server's directory


def mount_mem(lab, size):
    """The served bases live in memory (a tmpfs under the image server's root): the
    lab's image server shares this machine's one disk with the host being
    measured, and this machine's kernel evicts idle page cache within seconds
    (DAMON), so from that disk every client would wait for the server's reads
    (~250 MB/s) and the agent's durable writes would compete with them. On a
    cloud the image source is not the hypervisor's disk."""
    path = os.path.join(lab.image_dir, MEM_DIR)
    os.makedirs(path, exist_ok=True)
    if not os.path.ismount(path):
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % (size + 64 * MiB),
                        "bench-precache", path], check=True)
    return path


def umount_mem(lab):
    path = os.path.join(lab.image_dir, MEM_DIR)
    if os.path.ismount(path):
        subprocess.run(["umount", path], check=False)
    if os.path.isdir(path):
        os.rmdir(path)


def make_image(lab, name, size):
    path = os.path.join(lab.image_dir, name)
    if not os.path.exists(path) or os.path.getsize(path) != size:
        with open(path + ".tmp", "wb") as f:
            left = size
            while left:
                n = min(left, 16 * MiB)
                f.write(os.urandom(n))
                left -= n
        os.replace(path + ".tmp", path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return {"url": lab.image_url(name), "disk_format": "raw", "size": size,
            "hash_algo": "sha256", "hash": h.hexdigest()}


def host_timed(lab, host, script):
    out = lab.host_exec(host, ["/bin/sh", "-c",
                               's=$(date +%%s%%N); %s >/dev/null; e=$(date +%%s%%N); '
                               'echo $((e-s))' % script], timeout=600).stdout
    return int(out.split()[-1]) / 1e9


def agent_precache(agent, host, image):
    img = dict(image, id="bench-%s" % uuidlib.uuid4().hex[:12])
    ctxt = {"request_id": "req-bench-" + uuidlib.uuid4().hex[:8]}
    t0 = time.monotonic()
    agent.cache_images(ctxt, host, [img])
    while True:
        rows = {r["image_id"]: r for r in agent.get_image_cache(ctxt, host)}
        r = rows.get(img["id"])
        if r and r["state"] in ("cached", "failed"):
            break
        time.sleep(0.1)
    dt = time.monotonic() - t0
    if r["state"] != "cached":
        raise SystemExit("pre-cache failed: %s" % r["failure_reason"])
    return dt


def warm(path):
    """Read the served file just before a run: this machine's kernel reclaims idle
    page cache within seconds (DAMON), and a cold file makes every client wait
    for the image server's disk (~250 MB/s here), whatever the client does."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def clean(lab, host):
    manage = os.path.join(os.path.dirname(lab.state["agent_executable"]),
                          "computeagent-manage")
    lab.host_exec(host, [manage, "--config-file", lab.host(host)["agent_config"],
                         "image-cache", "clean", "--min-age", "0"], check=False)
    lab.host_exec(host, ["rm", "-f", SCRATCH], check=False)
    # every run starts on a quiet disk: the removed files' discards (ext4 mounted
    # with "discard" here) and any dirty pages are done before the clock starts,
    # so no run pays for the one before it
    lab.host_exec(host, ["sync"], check=False)
    time.sleep(1.0)


def qemu_img_limits(n=20):
    from oslo_concurrency import processutils
    from computeagent.conf import CONF
    from computeagent.images import qemu_img
    CONF([], project="computeagent", default_config_files=[])
    path = "/tmp/bench-precache-qemu.raw"
    with open(path, "wb") as f:
        f.truncate(MiB)
    args = ["info", "-f", "raw", "--force-share", "--output=json", path]
    limits = processutils.ProcessLimits(
        address_space=CONF.qemu_img.address_space_limit_mb * MiB,
        cpu_time=CONF.qemu_img.cpu_time_limit)
    res = {"oslo_prlimit": [], "prlimit1": [], "none": []}
    for _ in range(n):
        for k in res:
            t = time.perf_counter()
            if k == "oslo_prlimit":
                processutils.execute("qemu-img", *args, prlimit=limits)
            elif k == "prlimit1":
                qemu_img._execute(args)
            else:
                processutils.execute("qemu-img", *args)
            res[k].append(time.perf_counter() - t)
    os.unlink(path)
    return res


def report(data):
    w = []
    w.append(BEGIN)
    w.append("## Image pre-cache and qemu-img limits (issue 14)")
    w.append("")
    w.append("Produced by `tools/bench_precache.py --runs %d` on %s (host %s of the "
             "lab, commit %s). Random-byte bases (no holes), cold each run (a new "
             "image id), timed inside the host, alternating; median of the runs, "
             "all runs in `benchmarks-precache.json`. The agent's figure includes "
             "the cast, the 100 ms polling of `get_image_cache`, the fsync, "
             "`qemu-img info` and the sidecar; curl's do not fsync."
             % (data["runs"], data["date"], data["host"], data["commit"]))
    w.append("")
    w.append("| base | agent pre-cache | `curl -o` | `curl -o && sha256sum` | "
             "`curl -o && sync F` | agent / curl | agent / curl+sha256sum | "
             "agent / curl+sync |")
    w.append("|---|---|---|---|---|---|---|---|")
    for size, r in data["precache"].items():
        a, c, cs, cf = (med(r[k]) for k in ("agent", "curl", "curl_sha", "curl_sync"))
        w.append("| %s | %.2f s | %.2f s | %.2f s | %.2f s | **x%.2f** | **x%.2f** | "
                 "x%.2f |" % (size, a, c, cs, cf, a / c, a / cs, a / cf))
    q = data["qemu_img"]
    w.append("")
    w.append("`qemu-img info` per call (%d calls each, median): through oslo's "
             "`prlimit=` %.1f ms, through util-linux `prlimit(1)` %.1f ms (what the "
             "agent uses now), without limits %.1f ms."
             % (len(q["none"]), med(q["oslo_prlimit"]) * 1e3, med(q["prlimit1"]) * 1e3,
                med(q["none"]) * 1e3))
    w.append(END)
    return "\n".join(w) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--host", default="hostc")
    p.add_argument("--sizes", default="64,1024", help="MiB, comma separated")
    p.add_argument("--out", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument("--report-from", metavar="JSON", help="no lab: rewrite the section")
    args = p.parse_args(argv)
    if args.report_from:
        with open(args.report_from) as f:
            return write(args.out, report(json.load(f)))
    from oslo_config import cfg
    from computeagent.lab import lab as labmod
    from computeagent.rpc import api
    lab = labmod.Lab()
    if lab.state.get("state") != "up":
        lab.up(hosts=3, agents=True)
    cfg.CONF([], project="computeagent", default_config_files=[])
    lab.configure_messaging(cfg.CONF)  # amqps, the lab CA
    agent = api.ComputeAgentAPI(api.get_transport(
        cfg.CONF, url=lab.transport_url(from_root=True)), timeout=60)
    data = {"runs": args.runs, "host": args.host,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%d %H:%M UTC"),
            "commit": subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12",
                                      "HEAD"], capture_output=True,
                                     text=True).stdout.strip(),
            "precache": {}}
    sizes = [int(s) for s in args.sizes.split(",")]
    mount_mem(lab, sum(sizes) * MiB)
    try:
        measure(lab, agent, args, sizes, data)
    finally:
        umount_mem(lab)
    data["qemu_img"] = qemu_img_limits()
    text = report(data)
    print(text)
    with open(os.path.join(os.path.dirname(args.out), "benchmarks-precache.json"),
              "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    write(args.out, text)


def measure(lab, agent, args, sizes, data):
    for mib in sizes:
        name = "%s/bench-precache-%d.raw" % (MEM_DIR, mib)
        image = make_image(lab, name, mib * MiB)
        image_path = os.path.join(lab.image_dir, name)
        url = image["url"]
        r = {"agent": [], "curl": [], "curl_sha": [], "curl_sync": []}
        curl = "curl -s -f -o %s %s" % (SCRATCH, url)
        for i in range(args.runs):
            order = ["agent", "curl", "curl_sha", "curl_sync"]
            order = order[i % 4:] + order[:i % 4]
            for k in order:
                clean(lab, args.host)
                warm(image_path)
                if k == "agent":
                    r[k].append(agent_precache(agent, args.host, image))
                elif k == "curl":
                    r[k].append(host_timed(lab, args.host, curl))
                elif k == "curl_sha":
                    r[k].append(host_timed(lab, args.host,
                                           "%s && sha256sum %s" % (curl, SCRATCH)))
                else:
                    r[k].append(host_timed(lab, args.host,
                                           "%s && sync %s" % (curl, SCRATCH)))
                print("%4d MiB run %d %-9s %.3f s" % (mib, i + 1, k, r[k][-1]),
                      flush=True)
        clean(lab, args.host)
        data["precache"]["%d MiB" % mib] = r


def write(out, text):
    doc = open(out).read() if os.path.exists(out) else ""
    if BEGIN in doc and END in doc:
        doc = doc[:doc.index(BEGIN)] + text + doc[doc.index(END) + len(END) + 1:]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(out, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
