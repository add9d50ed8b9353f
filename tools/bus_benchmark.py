#!/usr/bin/env python3
"""Message-bus figures of computeagent on the lab: one RabbitMQ node vs. a 3-node
cluster, and failover over repeated node kills.

    COMPUTEAGENT_LAB_SLOT=<slot> .venv/bin/python tools/bus_benchmark.py \
        [--kills 10] [--calls 300] [--casts 1000] [--out docs/benchmarks.md]

Writes its own section of ``<out>`` (between ``<!-- bus-benchmark -->`` markers, the
rest of the file is left alone) and ``<out without .md>-bus.json`` (raw numbers).
Brings the lab up with 1 node, then with 3 nodes, and down at the end.

1. RPC call latency: ``list_migrations`` to hosta (a real round trip through the
   agent's quorum queue and a quorum reply queue), ``--calls`` in a row.
2. Cast throughput: ``--casts`` casts (``stop`` of an unknown uuid: validated, looked
   up, refused with an error notification) sent as fast as possible; rate from the
   first send until the agent's queue is empty again.
3. Failover (3 nodes, ``--kills`` rounds): SIGKILL the node hosta's agent is
   connected to; seconds until both agents answer a call again; meanwhile 20 casts
   (IP adds on a powered-off guest, each address new) are sent around the kill.
   Afterwards: casts sent / applied (address in the agent's record) / lost /
   duplicated (the agent's log says "nothing to do" for an address it already had:
   a redelivery, absorbed because add_fixed_ip is idempotent).
Figures, not assertions: nothing here fails on a slow number.
"""
import argparse
import glob
import hashlib
import json
import os
import statistics
import sys
import threading
import time
import uuid as uuidlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from computeagent.lab import Lab  # noqa: E402

MARK_BEGIN, MARK_END = "<!-- bus-benchmark -->", "<!-- /bus-benchmark -->"
EXTRA = {"DEFAULT": {"sync_power_state_interval": "10",
                     "image_cache_manager_interval": "0"},
         "libvirt": {"shutdown_timeout": "1"},
         "network": {"allowed_bridges": "br-lab"}}


def client(lab):
    from oslo_config import cfg
    from computeagent.rpc import api
    if not cfg.CONF._args:
        cfg.CONF([], project="computeagent", default_config_files=[])
    lab.configure_messaging(cfg.CONF)  # amqps, the lab CA
    transport = api.get_transport(cfg.CONF, url=lab.transport_url(from_root=True))
    return api.ComputeAgentAPI(transport, timeout=30)


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def messages_in(lab, queue):
    from computeagent.lab import broker as labbroker
    b = lab.running_broker_node()
    with labbroker.kombu_connection(b, connect_timeout=3) as conn:
        _n, messages, _c = conn.channel().queue_declare(queue=queue, passive=True)
        return messages


def call_latency(agent, n):
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        agent.list_migrations({}, "hosta")
        ms.append((time.perf_counter() - t0) * 1000)
    return {"n": n, "mean_ms": round(statistics.mean(ms), 2),
            "p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2)}


def cast_throughput(lab, agent, n):
    queue = lab.host("hosta")["rpc_queue"]
    unknown = str(uuidlib.uuid4())
    t0 = time.perf_counter()
    for i in range(n):
        agent.stop({"request_id": "req-bench-%d" % i}, "hosta", unknown)
    sent = time.perf_counter() - t0
    while messages_in(lab, queue):
        time.sleep(0.05)
    total = time.perf_counter() - t0
    return {"n": n, "send_s": round(sent, 2), "drained_s": round(total, 2),
            "casts_per_s": round(n / total, 1)}


def image(lab):
    path = sorted(glob.glob(os.path.join(lab.image_dir, "guest-*.raw")))
    if not path:
        from computeagent.lab import guest
        art = guest.build_guest()
        path = [os.path.join(lab.image_dir, "guest-%s.raw" % art.base_sha256[:16])]
        import shutil
        shutil.copyfile(art.base_raw, path[0])
    p = path[0]
    with open(p, "rb") as f:
        h = hashlib.sha256(f.read()).hexdigest()
    fn = os.path.basename(p)
    return {"id": "img-" + fn, "url": lab.image_url(fn), "disk_format": "raw",
            "size": os.path.getsize(p), "hash_algo": "sha256", "hash": h}


def wait(fn, timeout, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = fn()
            if r:
                return r
        except Exception:  # broker failing over
            pass
        time.sleep(interval)
    return None


def serves(agent, host):
    try:
        agent._prepare(host, timeout=3).call({}, "get_host_status")
        return True
    except Exception:  # not yet
        return False


def failover(lab, agent, kills):
    from tests.functional.conftest import make_instance
    inst = make_instance(image(lab), name="bench", ips=("10.7.0.1",))
    u = inst["uuid"]
    agent.spawn({}, "hosta", inst)
    wait(lambda: agent.get_instance({}, "hosta", u)["state"] == "ACTIVE", 120)
    agent.stop({}, "hosta", u)
    wait(lambda: agent.get_instance({}, "hosta", u)["state"] == "STOPPED", 60)
    rounds, sent = [], []
    seq = [2]

    def send(count):
        for _ in range(count):
            n = seq[0]
            seq[0] += 1
            ip = "10.7.%d.%d" % (n // 250, n % 250 + 1)
            try:
                agent.add_fixed_ip({"request_id": "req-fo-%d" % n}, "hosta", u, "net1", ip)
                sent.append(ip)
            except Exception as e:  # a cast the client could not send at all
                print("cast %s not sent: %s" % (ip, e), file=sys.stderr)
    for r in range(kills):
        k = lab.broker_node_of_agent("hosta") or 1
        send(10)
        sender = threading.Thread(target=send, args=(10,))
        t0 = time.monotonic()
        lab.kill_broker_node(k)
        sender.start()
        ok = wait(lambda: serves(agent, "hosta") and serves(agent, "hostb"), 120, 0.1)
        secs = time.monotonic() - t0 if ok else None
        sender.join()
        lab.start_broker_node(k)
        rounds.append({"node": k, "seconds": round(secs, 2) if secs else None})
        print("kill %d: node %d, calls again after %s s" % (r + 1, k, rounds[-1]["seconds"]))
    want = set(sent)

    def applied():
        have = set(agent.get_instance({}, "hosta", u)["networks"][0]["fixed_ips"])
        return have if want <= have else None
    have = wait(applied, 120) or set(
        agent.get_instance({}, "hosta", u)["networks"][0]["fixed_ips"])
    with open(lab.agent_log("hosta")) as f:
        dup = sum(1 for line in f if "add_fixed_ip" in line and "nothing to do" in line
                  and u in line)
    agent.delete({}, "hosta", u)
    secs = [x["seconds"] for x in rounds if x["seconds"] is not None]
    return {"kills": kills, "rounds": rounds,
            "median_s": round(statistics.median(secs), 2) if secs else None,
            "max_s": round(max(secs), 2) if secs else None,
            "never_recovered": sum(1 for x in rounds if x["seconds"] is None),
            "casts_sent": len(sent), "casts_applied": len(want & have),
            "casts_lost": len(want - have), "casts_duplicated": dup}


def report(res):
    one, three, fo = res["nodes_1"], res["nodes_3"], res["failover"]
    lines = [MARK_BEGIN, "## Message bus: 1 node vs. a 3-node cluster, failover", "",
             "`tools/bus_benchmark.py` on %s, lab slot %s, oslo.messaging %s, RabbitMQ "
             "3.10 (Debian), the agent's default bus settings (quorum queues, "
             "computeagent/conf/messaging.py)." % (res["date"], res["slot"], res["oslo"]),
             "",
             "| | 1 node | 3 nodes |", "|---|---|---|"]
    for key, label in (("mean_ms", "call mean (ms)"), ("p50_ms", "call p50 (ms)"),
                       ("p99_ms", "call p99 (ms)"), ("max_ms", "call max (ms)")):
        lines.append("| %s | %s | %s |" % (label, one["calls"][key], three["calls"][key]))
    lines.append("| casts/s end to end (%d casts) | %s | %s |" % (
        one["casts"]["n"], one["casts"]["casts_per_s"], three["casts"]["casts_per_s"]))
    lines.append("| machine load average (2 cores, other labs running) | %s | %s |" % (
        one.get("loadavg"), three.get("loadavg")))
    lines += ["", "Failover, %d SIGKILLs of the node hosta's agent was connected to "
              "(the node restarted after each):" % fo["kills"], "",
              "- seconds until both agents answer calls again: median %s, max %s "
              "(%d rounds never recovered within 120 s)" % (
                  fo["median_s"], fo["max_s"], fo["never_recovered"]),
              "- casts sent %d, applied %d, lost %d, duplicated %d (redeliveries the "
              "agent absorbed: add_fixed_ip is idempotent)" % (
                  fo["casts_sent"], fo["casts_applied"], fo["casts_lost"],
                  fo["casts_duplicated"]),
              "- per kill (s): " + ", ".join(str(r["seconds"]) for r in fo["rounds"]),
              "", MARK_END]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--casts", type=int, default=1000)
    ap.add_argument("--out", default="docs/benchmarks.md")
    args = ap.parse_args()
    import importlib.metadata
    res = {"date": time.strftime("%Y-%m-%d"), "slot": os.environ.get(
        "COMPUTEAGENT_LAB_SLOT", "0"), "oslo": importlib.metadata.version("oslo.messaging")}
    lab = Lab()
    try:
        for nodes in (1, 3):
            lab.up(hosts=2, agents=True, extra_conf=EXTRA, broker_nodes=nodes)
            agent = client(lab)
            res["nodes_%d" % nodes] = {"calls": call_latency(agent, args.calls),
                                       "casts": cast_throughput(lab, agent, args.casts),
                                       "loadavg": round(os.getloadavg()[0], 1)}
            print(nodes, "node(s):", res["nodes_%d" % nodes])
        res["failover"] = failover(lab, agent, args.kills)
        print(res["failover"])
    finally:
        lab.down()
    with open(os.path.splitext(args.out)[0] + "-bus.json", "w") as f:
        json.dump(res, f, indent=2, sort_keys=True)
    text = open(args.out).read() if os.path.exists(args.out) else ""
    section = report(res)
    if MARK_BEGIN in text:
        a, b = text.index(MARK_BEGIN), text.index(MARK_END) + len(MARK_END) + 1
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
