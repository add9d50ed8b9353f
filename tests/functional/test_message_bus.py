"""The message bus as a distributed engine, on the real stack: the agents' default bus
configuration (quorum queues, computeagent/conf/messaging.py) on the lab's single
node, then on a real 3-node RabbitMQ cluster (``lab.up(broker_nodes=3)``) whose
nodes the tests kill and restart.  What is asserted is what a user sees: calls
answered, instance records and the guests' real nwfilter parameters (virsh), queues
as RabbitMQ lists them, processes that exit or not.

The first tests run on the session's lab as it is (one node unless
COMPUTEAGENT_LAB_BROKER_NODES=3); the cluster fixture then re-ups the lab with three
nodes (~45 s) and leaves it so, all nodes running, for the modules that follow."""
import json
import os
import signal
import time
import uuid as uuidlib

import pytest

from computeagent import exception
from computeagent.lab import procutil
from tests.functional.conftest import (TCG_LIVE_MIGRATION, delete_everywhere, make_instance, virsh,
                                       wait_for, wait_state)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

A, B = "hosta", "hostb"
WATCHDOG = {"interval": "4", "call_timeout": "3", "failures": "2"}


def rabbit_queues(lab):
    out = lab.rabbitmqctl("list_queues", "name", "type", "consumers", "messages",
                          "--formatter",
                          "json").stdout
    return {q["name"]: q for q in json.loads(out[out.index("["):])}


def client(lab):
    from oslo_config import cfg
    from computeagent.rpc import api
    cfg.CONF([], project="computeagent", default_config_files=[])
    lab.configure_messaging(cfg.CONF)   # amqps, the lab CA
    transport = api.get_transport(cfg.CONF, url=lab.transport_url(from_root=True))
    return api.ComputeAgentAPI(transport, timeout=30)


def serves(agent, host, timeout=5):
    """True when ``host``'s agent answers a call within ``timeout`` s."""
    agent._prepare(host, timeout=timeout).call({}, "get_host_status")
    return True


def fixed_ips(lab, host, uuid):
    """The IP parameters of the guest's clean-traffic filter, as libvirt has them."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(virsh(lab, host, "dumpxml", "instance-" + uuid))
    return [p.get("value") for p in root.iter("parameter") if p.get("name") == "IP"]


def all_brokers_up(lab):
    lab.start_all_broker_nodes()


# -- the default configuration, on the session's broker ----------------------------
def test_rpc_queues_are_quorum_queues(lab, agent, ctxt):
    """The agents' defaults declare quorum queues (RabbitMQ 4.3 refuses the transient
    non-exclusive queues of oslo.messaging's own defaults), and they serve."""
    for host in (A, B):
        assert serves(agent, host)
    names = ("computeagent", "computeagent.hosta", "computeagent.hostb")
    # a quorum queue's consumer count settles a moment after the consumer attaches
    deadline = time.monotonic() + 30
    while True:
        queues = rabbit_queues(lab)
        if all(queues.get(n, {}).get("consumers", 0) >= 1 for n in names) or \
                time.monotonic() > deadline:
            break
        time.sleep(1)
    for name in names:
        assert queues[name]["type"] == "quorum", queues[name]
        assert queues[name]["consumers"] >= 1, queues[name]
    replies = [q for n, q in queues.items() if n.startswith("reply_")]
    fanouts = [q for n, q in queues.items() if n.startswith("computeagent_fanout")]
    assert replies and fanouts
    assert {q["type"] for q in replies + fanouts} == {"quorum"}


def test_sigterm_with_no_broker_node_reachable_exits_within_stop_timeout(lab):
    """An agent that (re)starts while every broker node is down, then gets SIGTERM,
    exits within its stop_timeout (it used to retry the broker forever)."""
    conf = dict(lab.host(B).get("extra_conf") or {})
    try:
        lab.stop_agent(B)
        for k in range(1, len(lab.broker_nodes()) + 1):
            lab.stop_broker_node(k)
        pid = lab.start_agent(B, serving_timeout=None, wait=3,
                              extra_conf={"DEFAULT": {"stop_timeout": "8"}})
        assert pid, "the agent did not even start without a broker"

        def trying_broker():
            with open(lab.agent_log(B)) as f:
                return "no broker node reachable yet" in f.read().split(
                    "starting agent of hostb")[-1]
        wait_for(trying_broker, timeout=60, what="agent retrying the broker")
        os.kill(pid, signal.SIGTERM)
        t0 = time.monotonic()
        while procutil.pid_alive(pid) and procutil.proc_state(pid) != "Z":
            assert time.monotonic() - t0 < 60, "agent still alive 60 s after SIGTERM"
            time.sleep(0.2)
        with open(lab.agent_log(B)) as f:
            assert "stop did not finish in 8 s" in f.read()
    finally:
        all_brokers_up(lab)
        lab.stop_agent(B)
        lab.start_agent(B, extra_conf=conf)


# -- the 3-node cluster ------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(lab):
    extra = {k: dict(v) for k, v in (lab.state.get("extra_conf") or {}).items()}
    extra["rpc_watchdog"] = dict(WATCHDOG)
    lab.up(hosts=2, agents=True, extra_conf=extra, broker_nodes=3)
    return lab


@pytest.fixture(scope="module")
def bus(cluster):
    """An RPC client naming all three nodes (the session's may name only node 1)."""
    return client(cluster)


def test_cluster_has_three_running_members(cluster):
    from computeagent.lab import cluster as labcluster
    for k in (1, 2, 3):
        assert len(labcluster.members(cluster.broker_node(k))) == 3


def test_kill_the_node_each_agent_uses_while_idle(cluster, bus):
    """SIGKILL the node an agent is connected to: both agents answer again within
    30 s (the issue's bound), then the node comes back."""
    killed = set()
    for host in (A, B):
        k = cluster.broker_node_of_agent(host)
        assert k, "cannot tell which node %s's agent uses" % host
        if k in killed:
            continue
        cluster.kill_broker_node(k)
        killed.add(k)
        try:
            t0 = time.monotonic()
            for h in (A, B):
                wait_for(lambda: serves(bus, h), timeout=30 - (time.monotonic() - t0),
                         interval=0.5, what="%s serving after node %d died" % (h, k))
        finally:
            cluster.start_broker_node(k)


def test_watchdog_restarts_a_deaf_rpc_server(cluster, bus):
    """The agent's queue loses its binding (the consumer stays, no message reaches
    it): its watchdog notices that a call to itself gets no answer, restarts its RPC
    server, and the agent serves again."""
    from computeagent.lab import broker as labbroker
    b = cluster.running_broker_node()
    with labbroker.kombu_connection(b) as conn:
        conn.channel().queue_unbind(queue="computeagent.hostb", exchange="openstack",
                                    routing_key="computeagent.hostb")
    with pytest.raises(Exception):
        serves(bus, B, timeout=2)
    wait_for(lambda: serves(bus, B, timeout=3), timeout=90, interval=1,
             what="hostb serving again")
    with open(cluster.agent_log(B)) as f:
        log = f.read()
    assert "the agent is deaf (a call to itself got no answer" in log


def test_burst_of_200_casts_with_a_node_kill_applies_each_exactly_once(
        cluster, bus, guest_image, ctxt):
    """200 casts (198 IP adds and 2 removes on two powered-off guests, plus power-offs)
    while the node hosta's agent is connected to is killed: the final state is exactly
    the expected one, in the agent's record and in the guests' real domain
    definitions (no address lost, none twice).  The guests are off because a live
    filter update costs ~8 s each under TCG on the lab machine; the cast path is
    the same."""
    insts = [make_instance(guest_image, name="burst%d" % i, ips=("10.9.%d.1" % i,))
             for i in (1, 2)]
    for inst in insts:
        bus.spawn(ctxt, A, inst)
    try:
        for inst in insts:
            wait_state(bus, ctxt, A, inst["uuid"], "ACTIVE")
            bus.stop(ctxt, A, inst["uuid"])
        for inst in insts:
            wait_state(bus, ctxt, A, inst["uuid"], "STOPPED")
        casts = []
        for i, inst in enumerate(insts, start=1):
            casts += [("add", inst["uuid"], "10.9.%d.%d" % (i, n)) for n in range(2, 101)]
            casts.append(("remove", inst["uuid"], "10.9.%d.1" % i))
        casts.sort(key=lambda c: c[2].split(".")[-1].zfill(3))  # interleave the guests
        casts.insert(60, ("stop", insts[0]["uuid"], None))
        casts.insert(140, ("stop", insts[1]["uuid"], None))
        k = cluster.broker_node_of_agent(A)
        for n, (op, uuid, ip) in enumerate(casts):
            if n == len(casts) // 2:
                cluster.kill_broker_node(k)
            c = {"request_id": "req-burst-%d" % n}
            if op == "add":
                bus.add_fixed_ip(c, A, uuid, "net1", ip)
            elif op == "remove":
                bus.remove_fixed_ip(c, A, uuid, "net1", ip)
            else:
                bus.stop(c, A, uuid)
        cluster.start_broker_node(k)
        for i, inst in enumerate(insts, start=1):
            want = sorted("10.9.%d.%d" % (i, n) for n in range(2, 101))

            def record_done(u=inst["uuid"], want=want):
                ips = bus.get_instance(ctxt, A, u)["networks"][0]["fixed_ips"]
                return sorted(ips) == want or None
            try:
                wait_for(record_done, timeout=240, interval=1, what="burst applied")
            except AssertionError:
                # say whether casts were lost or only slow (the queue still holds some)
                ips = set(bus.get_instance(ctxt, A, inst["uuid"])["networks"][0][
                    "fixed_ips"])
                queued = rabbit_queues(cluster)["computeagent.hosta"]
                raise AssertionError("missing %s, extra %s, agent queue %s" % (
                    sorted(set(want) - ips), sorted(ips - set(want)), queued))
            got = wait_state(bus, ctxt, A, inst["uuid"], "STOPPED")
            ips = got["networks"][0]["fixed_ips"]
            assert len(ips) == len(set(ips)) == 99
            assert sorted(fixed_ips(cluster, A, inst["uuid"])) == want
    finally:
        for inst in insts:
            delete_everywhere(bus, ctxt, inst["uuid"])


def test_casts_queued_while_agent_down_survive_a_node_restart(
        cluster, bus, guest_image, ctxt):
    """Agent down, casts sent to it, a broker node restarted, agent started: the
    queued casts are delivered (quorum queues are durable and replicated)."""
    inst = make_instance(guest_image, name="queued", ips=("10.8.0.1",))
    bus.spawn(ctxt, B, inst)
    try:
        wait_state(bus, ctxt, B, inst["uuid"], "ACTIVE")
        conf = dict(cluster.host(B).get("extra_conf") or {})
        cluster.stop_agent(B)
        # the quorum queue drops the stopped agent's consumer a moment later
        # (seen: still 1 right after the process exited)
        wait_for(lambda: rabbit_queues(cluster)["computeagent.hostb"]["consumers"] == 0,
                 timeout=30, interval=1, what="hostb's consumer gone")
        for n in range(2, 6):
            bus.add_fixed_ip(ctxt, B, inst["uuid"], "net1", "10.8.0.%d" % n)
        bus.stop(ctxt, B, inst["uuid"])
        # queue statistics are emitted every few seconds
        wait_for(lambda: rabbit_queues(cluster)["computeagent.hostb"]["messages"] >= 5,
                 timeout=30, interval=1, what="the 5 casts queued for hostb")
        k = 1 + (cluster.broker_node_of_agent(A) or 1) % 3  # not the one hosta uses
        cluster.stop_broker_node(k)
        cluster.start_broker_node(k)
        cluster.start_agent(B, extra_conf=conf)
        got = wait_state(bus, ctxt, B, inst["uuid"], "STOPPED")
        # seen once (1 of 5 runs): 10.8.0.3 missing; what hostb's agent did, in order
        with open(cluster.agent_log(B), errors="replace") as f:
            did = [line[:300] for line in f if inst["uuid"] in line and (
                "fixed_ip" in line or "power" in line or "Traceback" in line)]
        assert sorted(got["networks"][0]["fixed_ips"]) == [
            "10.8.0.%d" % n for n in range(1, 6)], (got["fault"], did)
    finally:
        delete_everywhere(bus, ctxt, inst["uuid"])


def test_node_kill_during_live_migration_completes_or_rolls_back(
        cluster, bus, guest_image, ctxt):
    """Kill the node the source agent uses while a live migration runs: it ends
    completed or failed (never both hosts running the guest), and the instance
    answers to a power-off afterwards where it lives."""
    inst = make_instance(guest_image, name="migkill")
    bus.spawn(ctxt, A, inst)
    uuid = inst["uuid"]
    try:
        wait_state(bus, ctxt, A, uuid, "ACTIVE")
        mid = "mig-" + uuidlib.uuid4().hex[:12]
        k = cluster.broker_node_of_agent(A)
        bus.live_migrate(ctxt, A, uuid, B, mid)
        time.sleep(0.3)  # the flow's peer calls (pre_live_migration, ...) meet the kill
        cluster.kill_broker_node(k)
        try:
            m = wait_for(lambda: (lambda m: m if m["status"] in (
                "completed", "failed", "cancelled") else None)(
                bus.get_migration(ctxt, A, mid)), timeout=240, interval=1,
                what="migration end")
        finally:
            cluster.start_broker_node(k)
        running = [h for h in (A, B) if "running" in virsh(
            cluster, h, "domstate", "instance-" + uuid, check=False)]
        assert len(running) == 1, (m, running)
        host = B if m["status"] == "completed" else A
        assert running == [host], (m, running)
        wait_state(bus, ctxt, host, uuid, "ACTIVE")
        bus.stop(ctxt, host, uuid)
        wait_state(bus, ctxt, host, uuid, "STOPPED")
    finally:
        delete_everywhere(bus, ctxt, uuid)


def test_probe_uuid_is_unknown_to_the_agent(cluster, bus, ctxt):
    """The watchdog's probe relies on this answer."""
    from computeagent.rpc import watchdog
    with pytest.raises(exception.InstanceNotFound):
        bus.get_instance(ctxt, A, watchdog.PROBE_UUID)
