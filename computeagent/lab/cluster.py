"""The lab's RabbitMQ *cluster*: ``computeagent-lab up --broker-nodes 3``.

Node 1 is the lab's usual node (``lab.json`` "broker", computeagent.lab.broker); nodes
2..N (``lab.json`` "broker_nodes") are more Erlang nodes of the same kind on the same
machine, each with its own node name, data, logs, pid file, AMQP port and distribution
port, sharing node 1's Erlang cookie and node 1's epmd (one epmd per machine is how
Erlang finds its nodes).  Each joins node 1 with ``rabbitmqctl stop_app; join_cluster;
start_app``; quorum queues (Raft, a replica on every node) and streams are available on
RabbitMQ 3.10's fresh nodes.

Per-node settings are made in ONE place, :func:`node_settings`: node k (1-based) gets
the block of ``NODE_PORT_STEP`` ports starting at ``BROKER_PORT + NODE_PORT_STEP*(k-1)``
(+0 AMQP; +1, +2 are that node's for other listeners, e.g. amqps), the same for the
distribution port.  Anything that configures one node (computeagent.lab.broker's
``default_settings`` / ``write_config``: listeners, TLS, ...) thereby applies to every
node.

Measured on the 2-core lab machine: 3 nodes up and clustered in ~20 s (one node: 4-5 s).
"""
import json
import os
import shutil
import signal
import threading
import time

from computeagent.lab import broker as _broker
from computeagent.lab import procutil
from computeagent.lab.errors import LabError
from computeagent.lab.layout import (BROKER_DIST_PORT, BROKER_EPMD_PORT, BROKER_NODE,
                                     BROKER_PORT, BROKER_USER)

MAX_NODES = 3
NODE_PORT_STEP = 3


def node_name(k):
    """1 -> the lab's usual node name; 2 -> 'calab<slot>-2@localhost', ..."""
    if k == 1:
        return BROKER_NODE
    name, at, host = BROKER_NODE.partition("@")
    return f"{name}-{k}{at}{host}"


def node_settings(lab_dir, k, listen_ips, password=None, ca_dir=None, agent_users=None):
    """Settings (the dict computeagent.lab.broker works on) of node ``k`` (1-based)."""
    if not 1 <= k <= MAX_NODES:
        raise LabError(f"broker node {k} out of range 1..{MAX_NODES}")
    d = os.path.join(lab_dir, "broker" if k == 1 else f"broker-{k}")
    off = NODE_PORT_STEP * (k - 1)
    s = _broker.default_settings(d, listen_ips, port=BROKER_PORT + off,
                                 dist_port=BROKER_DIST_PORT + off,
                                 epmd_port=BROKER_EPMD_PORT, node=node_name(k),
                                 user=BROKER_USER, password=password, ca_dir=ca_dir,
                                 agent_users=agent_users)
    s["index"] = k
    return s


def transport_url(nodes, address, user=None, password=None):
    """One URL naming every node (oslo.messaging fails over between them); by default
    with the lab user, else ``user`` / ``password`` (an agent's own user)."""
    hosts = ",".join(f"{user or n['user']}:{password or n['password']}@{address}:"
                     f"{n['port']}" for n in nodes)
    return f"rabbit://{hosts}/"


def prepare(first, node):
    """Before node ``node`` first starts: node 1's cookie, node 1's epmd."""
    os.makedirs(node["dir"], exist_ok=True)
    cookie = os.path.join(node["dir"], ".erlang.cookie")
    if not os.path.exists(cookie):
        shutil.copyfile(os.path.join(first["dir"], ".erlang.cookie"), cookie)
        os.chmod(cookie, 0o400)
    node["epmd_ref"] = first.get("epmd_ref")


def start(first, node):
    """Start node ``node`` (not node 1) with node 1's cookie and epmd; returns the
    Popen (does not wait, see computeagent.lab.broker.wait_ready)."""
    if not os.path.exists(os.path.join(first["dir"], ".erlang.cookie")):
        _broker.write_config(first)  # node 1's cookie exists before anyone uses it
    prepare(first, node)
    if not procutil.ref_alive(node.get("epmd_ref")):
        node["epmd_ref"] = first["epmd_ref"] = _broker.start_epmd(first)
    return _broker.start(node)


def join(first, node, timeout=90):
    """Make ``node`` (running, fresh) a member of node 1's cluster."""
    for args in (["stop_app"], ["join_cluster", first["node"]], ["start_app"]):
        r = _broker.rabbitmqctl(node, *args, timeout=timeout, check=False)
        if r.returncode != 0:
            raise LabError(f"rabbitmqctl {' '.join(args)} on {node['node']} failed: "
                           f"{r.stdout}{r.stderr}")
    node["joined"] = True


def start_nodes(first, nodes):
    """Start nodes 2..N (node 1 already started); see join_nodes."""
    return [start(first, n) for n in nodes]


def join_nodes(first, nodes, timeout=120.0):
    """Once node 1 is ready: wait for each of nodes 2..N and join it, one at a time
    (each join is a schema change on node 1)."""
    deadline = time.monotonic() + timeout
    for n in nodes:
        _broker.wait_ready(n, timeout=max(5.0, deadline - time.monotonic()))
        join(first, n)
        _broker.wait_ready(n, timeout=max(5.0, deadline - time.monotonic()))


def members(settings):
    """Running members of the cluster as node ``settings`` sees them."""
    r = _broker.rabbitmqctl(settings, "cluster_status", "--formatter", "json")
    return sorted(json.loads(r.stdout).get("running_nodes") or [])


def kill(node):
    """SIGKILL the node's beam.smp (a crash: no clean shutdown, no goodbye to peers)."""
    beam = node.get("beam_ref") or _broker._beam_ref(node)
    if beam:
        procutil.terminate([beam], timeout=10.0, sig=signal.SIGKILL)
    procutil.terminate([r for r in [node.get("server_ref")] if r], timeout=3.0)
    node["beam_ref"] = node["server_ref"] = None
    node.pop("_proc", None)


def stop_all(first, nodes):
    """Stop nodes 2..N (node 1 and epmd are computeagent.lab.broker.stop's)."""
    threads = [threading.Thread(target=_broker.stop, args=(n,),
                                kwargs={"stop_epmd": False}) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class ClusterMixin:
    """Broker nodes of the lab (part of :class:`Lab`): node 1 is ``state["broker"]``,
    nodes 2..N ``state["broker_nodes"]``."""

    def broker_nodes(self):
        """Settings of every broker node, node 1 first."""
        self._refresh()
        return [self._broker_settings()] + list(self.state.get("broker_nodes") or [])

    def broker_node(self, k):
        nodes = self.broker_nodes()
        if not 1 <= k <= len(nodes):
            raise LabError(f"no broker node {k} (the lab has {len(nodes)})")
        return nodes[k - 1]

    def _set_broker_urls(self):
        """transport_url (root namespace) and transport_url_hosts name every node."""
        b = self.state["broker"]
        nodes = [b] + list(self.state.get("broker_nodes") or [])
        for n in nodes[1:]:
            n["password"] = b["password"]
            n["agent_users"] = dict(b.get("agent_users") or {})
        b["transport_url"] = transport_url(nodes, "127.0.0.1")
        b["transport_url_hosts"] = transport_url(nodes, self.state["network"]["gateway"])

    def broker_node_running(self, k):
        return _broker.is_running(self.broker_node(k))

    def running_broker_node(self):
        """Settings of a running node (for management queries), node 1 preferred."""
        for n in self.broker_nodes():
            if _broker.is_running(n):
                return n
        raise LabError("no broker node of the lab is running")

    def stop_broker_node(self, k):
        """Clean shutdown of node ``k`` only (SIGTERM to its beam.smp)."""
        with self._locked():
            _broker.stop(self.broker_node(k), stop_epmd=False)
            self._save()

    def kill_broker_node(self, k):
        """SIGKILL node ``k``'s beam.smp: a crash, peers see it vanish."""
        with self._locked():
            kill(self.broker_node(k))
            self._save()

    def start_broker_node(self, k, timeout=90.0):
        """Start node ``k`` again (same name, data, ports); returns when clients can
        log in to it.  It rejoins its cluster by itself (its data says it is a
        member)."""
        with self._locked():
            n = self.broker_node(k)
            if not _broker.is_running(n):
                first = self.broker_node(1)
                proc = _broker.start(n) if k == 1 else start(first, n)
                self._keep(proc)
                self._save()
                _broker.wait_ready(n, timeout=timeout)
            self._save()

    def start_all_broker_nodes(self, timeout=120.0):
        """Start every stopped node at once: after a whole-cluster stop each node
        waits at boot for the peers it last saw, so one at a time would deadlock."""
        with self._locked():
            first = self.broker_node(1)
            todo = [n for n in self.broker_nodes() if not _broker.is_running(n)]
            for n in todo:
                self._keep(_broker.start(n) if n is first else start(first, n))
            self._save()
            deadline = time.monotonic() + timeout
            for n in todo:
                _broker.wait_ready(n, timeout=max(5.0, deadline - time.monotonic()))
            self._save()

    def broker_node_of_agent(self, name):
        """Index of the broker node host ``name``'s agent has its AMQP connections to
        (from the agent's own sockets, ``ss`` inside the host), or None."""
        pid = self.agent_pid(name)
        if pid is None:
            return None
        r = self.host_exec(name, ["ss", "-tnpH", "state", "established"], check=False)
        out = r.stdout if hasattr(r, "stdout") else r
        out = out.decode() if isinstance(out, bytes) else out
        ports = {n["port"]: i for i, n in enumerate(self.broker_nodes(), start=1)}
        gw = self.state["network"]["gateway"]
        found = {}
        for line in out.splitlines():
            if f"pid={pid}," not in line:
                continue
            fields = line.split()
            peer = fields[3] if len(fields) > 3 else ""
            ip, _, port = peer.rpartition(":")
            if ip == gw and port.isdigit() and int(port) in ports:
                k = ports[int(port)]
                found[k] = found.get(k, 0) + 1
        return max(found, key=found.get) if found else None
