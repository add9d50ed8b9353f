"""The lab broker is secure by default (issue 9): amqps only, the broker's certificate
from the lab CA, one user per agent that cannot touch another agent's queue, no
guest user; the agents serve over it."""
import json
import socket

import pytest

from computeagent.lab import broker as labbroker
from computeagent.lab import pki

pytestmark = pytest.mark.realstack


def _node(lab):
    return lab.running_broker_node()


def test_plain_amqp_is_refused(lab):
    b = _node(lab)
    # the AMQP 0-9-1 protocol header in clear: a TLS listener never answers
    # with connection.start (it closes, or sends a TLS alert)
    with socket.create_connection(("127.0.0.1", b["port"]), timeout=5) as s:
        s.sendall(b"AMQP\x00\x00\x09\x01")
        s.settimeout(5)
        try:
            data = s.recv(64)
        except (ConnectionResetError, socket.timeout):
            data = b""
    assert not data.startswith(b"AMQP") and b"\x00\x0a\x00\x0a" not in data[:16]
    with labbroker.kombu_connection(b, ssl_opts=False, connect_timeout=5) as conn:
        with pytest.raises(Exception):
            conn.connect()


def test_another_ca_is_refused(lab, tmp_path):
    b = _node(lab)
    other = pki.make_ca(str(tmp_path / "other-ca"), cn="not the lab CA")
    opts = labbroker.client_ssl(b, ca=other[0])
    with labbroker.kombu_connection(b, ssl_opts=opts, connect_timeout=5) as conn:
        with pytest.raises(Exception, match="(?i)certificate"):
            conn.connect()
    # the lab CA works (the same call, the right CA)
    with labbroker.kombu_connection(b, connect_timeout=5) as conn:
        conn.connect()
        assert conn.connected


def test_users_no_guest_and_agents_kept_apart(lab):
    import amqp.exceptions
    b = _node(lab)
    users = {u["user"] for u in json.loads(
        lab.rabbitmqctl("list_users", "--formatter", "json").stdout)}
    assert "guest" not in users
    assert {labbroker.agent_user(h) for h in lab.host_names} <= users
    for own, other in (("hosta", "hostb"), ("hostb", "hosta")):
        with labbroker.kombu_connection(b, user=labbroker.agent_user(own),
                                        password=b["agent_users"][own],
                                        connect_timeout=5) as conn:
            conn.connect()
            ch = conn.channel()
            with pytest.raises(amqp.exceptions.AccessRefused):
                ch.basic_consume(queue="computeagent." + other, callback=lambda m: None)
            # its own server queue is its to use
            ch = conn.channel()
            _n, _m, consumers = ch.queue_declare(queue="computeagent." + own,
                                                 passive=True)
            assert consumers >= 1
    # a guessed password gets nowhere
    with labbroker.kombu_connection(b, user=labbroker.agent_user("hosta"),
                                    password="guessed", connect_timeout=5) as conn:
        with pytest.raises(Exception):
            conn.connect()


def test_agents_serve_over_amqps(lab, agent, ctxt):
    for host in ("hosta", "hostb"):
        assert agent.get_host_status(ctxt, host)["host"] == host
    out = lab.rabbitmqctl("list_connections", "user", "ssl", "--formatter", "json").stdout
    conns = json.loads(out)
    assert conns and all(c["ssl"] for c in conns)
    seen = {c["user"] for c in conns}
    assert {labbroker.agent_user("hosta"), labbroker.agent_user("hostb")} <= seen
