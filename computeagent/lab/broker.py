"""The lab's private RabbitMQ node.

It runs beside any other RabbitMQ of the machine without touching it: its own node name,
its own Erlang cookie (HOME is the broker dir), its own epmd on its own port, its own
distribution port, its own config/env/plugins files (the machine's /etc/rabbitmq is never
read), its data, logs and pid file under the lab dir.  It listens for AMQP on
127.0.0.1:<port> (root namespace) and on the lab bridge's address (hosts).

The lab user is also the node's *default user* (rabbitmq.conf ``default_user`` / ``default_pass``
/ ``default_permissions``), seeded when the node boots on an empty database: no slow
``rabbitmqctl`` round trips at start-up.  The node is started in the foreground (the
``rabbitmq-server`` script stays as a small shell parent of ``beam.smp``) in a new
session and stopped by PID: SIGTERM makes RabbitMQ shut down cleanly.

TLS (issue 9): the node listens for AMQP over TLS only (amqps, on the same port; no
plain listener).  Its server certificate (``<broker dir>/tls``, subject
``O=computeagent-lab,CN=calab-broker``, subjectAltName localhost, calab-broker,
127.0.0.1 and the bridge address) is signed by the lab CA (computeagent.lab.pki);
clients verify it against that CA (``[oslo_messaging_rabbit] ssl = true``,
``ssl_ca_file``).  Users come from a definitions file loaded at boot: the lab user
(administrator, for tests and rabbitmqctl-like queries) and one user per agent,
``computeagent-<host>``, whose permissions exclude the other agents' server queues
(:func:`agent_permissions`).  There is no ``guest`` user.  Inter-node (Erlang
distribution) traffic of a lab cluster stays in clear on loopback.

Measured on the 2-core lab machine: boot 4-5 s (fresh or not), stop ~1 s.
"""
import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time

from computeagent.lab import pki, procutil
from computeagent.lab.errors import LabError

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/bin/epmd"


class BrokerError(LabError):
    pass


AGENT_USER_PREFIX = "computeagent-"


def agent_user(host):
    """The broker user of host ``host``'s agent."""
    return AGENT_USER_PREFIX + host


def agent_permissions(host, topic="computeagent"):
    """(configure, write, read) regexes of ``agent_user(host)``.

    What oslo.messaging needs from an agent: declare and consume its topic queue
    (``computeagent``), its server queue (``computeagent.<host>``), fanout queues
    (``computeagent_fanout_*``), reply queues (``reply_*``); declare and publish to the
    exchanges (``openstack``, ``computeagent_fanout``, ``amq.default`` for replies),
    notifications (``notifications.*``).  Everything except *another* agent's server
    queue ``computeagent.<other host>``: that one it may neither declare, delete,
    bind nor consume from.  Publishing to it goes through the ``openstack`` exchange
    (write on the exchange), so agent-to-agent calls keep working."""
    t = topic.replace(".", r"\.")
    h = host.replace(".", r"\.")
    own_only = r"^(?!%s\.(?!%s$)).*$" % (t, h)
    return own_only, ".*", own_only


def _password_hash(password):
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + pw))."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()
                            ).decode()


def default_settings(broker_dir, listen_ips, port=5673, dist_port=25673, epmd_port=24369,
                     node="calab@localhost", user="computeagent", password=None,
                     ca_dir=None, agent_users=None):
    return {
        "dir": broker_dir,
        "tls": ca_dir is not None,
        "ca_dir": ca_dir,               # the lab CA (computeagent.lab.pki.make_ca)
        "tls_dir": os.path.join(broker_dir, "tls"),
        "agent_users": dict(agent_users or {}),   # host -> password
        "node": node,
        "port": port,
        "dist_port": dist_port,
        "epmd_port": epmd_port,
        "listen": list(listen_ips),
        "user": user,
        "password": password or secrets.token_hex(12),
        "pid_file": os.path.join(broker_dir, "rabbit.pid"),
        "log": os.path.join(broker_dir, "server.out"),
        "log_dir": os.path.join(broker_dir, "log"),
        "mnesia_dir": os.path.join(broker_dir, "mnesia"),
        "epmd_log": os.path.join(broker_dir, "epmd.log"),
        "epmd_pid_file": os.path.join(broker_dir, "epmd.pid"),
        "server_ref": None,    # the rabbitmq-server shell script (foreground mode)
        "beam_ref": None,      # beam.smp, the node itself
        "epmd_ref": None,      # our own epmd
    }


def env(settings):
    """Environment for rabbitmq-server and rabbitmqctl addressing this node only."""
    d = settings["dir"]
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("RABBITMQ_", "ERL_"))}
    e.update({
        "HOME": d,  # -> $HOME/.erlang.cookie is the lab's own cookie
        "RABBITMQ_NODENAME": settings["node"],
        "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
        "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": settings["mnesia_dir"],
        "RABBITMQ_LOG_BASE": settings["log_dir"],
        "RABBITMQ_PID_FILE": settings["pid_file"],
        "RABBITMQ_DIST_PORT": str(settings["dist_port"]),
        "ERL_EPMD_PORT": str(settings["epmd_port"]),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        # Erlang's resolver: our own host table only.  Without it, the listener
        # start-up does a reverse lookup of the bridge address, which waits for the
        # (unreachable) DNS server: +5 s at boot, +8 s at shutdown.
        "ERL_INETRC": os.path.join(d, "inetrc"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
            "-kernel inet_dist_use_interface {127,0,0,1}",
    })
    return e


def write_config(settings):
    d = settings["dir"]
    os.makedirs(d, exist_ok=True)
    os.makedirs(settings["log_dir"], exist_ok=True)
    os.makedirs(settings["mnesia_dir"], exist_ok=True)
    if settings.get("tls"):
        tls = make_certificate(settings)
        lines = ["listeners.tcp = none"]
        lines += [f"listeners.ssl.{i} = {ip}:{settings['port']}"
                  for i, ip in enumerate(settings["listen"], start=1)]
        lines += [
            f"ssl_options.cacertfile = {tls['cacert']}",
            f"ssl_options.certfile = {tls['cert']}",
            f"ssl_options.keyfile = {tls['key']}",
            "ssl_options.verify = verify_peer",
            # agents authenticate with user + password; a client certificate, if
            # sent, must be the lab CA's
            "ssl_options.fail_if_no_peer_cert = false",
            "ssl_options.versions.1 = tlsv1.3",
            "ssl_options.versions.2 = tlsv1.2",
        ]
    else:
        lines = [f"listeners.tcp.{i} = {ip}:{settings['port']}"
                 for i, ip in enumerate(settings["listen"], start=1)]
    _write(os.path.join(d, "definitions.json"), json.dumps(definitions(settings), indent=1))
    lines += [
        f"load_definitions = {os.path.join(d, 'definitions.json')}",
        f"default_user = {settings['user']}",
        f"default_pass = {settings['password']}",
        "default_vhost = /",
        "default_permissions.configure = .*",
        "default_permissions.read = .*",
        "default_permissions.write = .*",
        "default_user_tags.administrator = true",
        "loopback_users = none",
        "log.file.level = info",
        "log.console = false",
        # the lab machine may be small; never block publishers on the disk alarm
        "disk_free_limit.absolute = 10MB",
    ]
    _write(os.path.join(d, "rabbitmq.conf"), "\n".join(lines) + "\n")
    _write(os.path.join(d, "rabbitmq-env.conf"), "# computeagent lab: nothing here\n")
    _write(os.path.join(d, "enabled_plugins"), "[].\n")
    hosts = ['{host, {127,0,0,1}, ["localhost"]}.']
    for ip in settings["listen"]:
        if ip != "127.0.0.1":
            hosts.append('{host, {%s}, ["calab-broker"]}.' % ip.replace(".", ","))
    hosts.append("{lookup, [file]}.")
    _write(os.path.join(d, "inetrc"), "\n".join(hosts) + "\n")
    cookie = os.path.join(d, ".erlang.cookie")
    if not os.path.exists(cookie):
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16).upper())


def definitions(settings):
    """Users and permissions the node loads at boot (no guest user)."""
    users = [{"name": settings["user"], "password_hash": _password_hash(settings["password"]),
              "hashing_algorithm": "rabbit_password_hashing_sha256",
              "tags": ["administrator"]}]
    perms = [{"user": settings["user"], "vhost": "/", "configure": ".*", "write": ".*",
              "read": ".*"}]
    for host, pw in sorted((settings.get("agent_users") or {}).items()):
        conf_re, write_re, read_re = agent_permissions(host)
        users.append({"name": agent_user(host), "password_hash": _password_hash(pw),
                      "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []})
        perms.append({"user": agent_user(host), "vhost": "/", "configure": conf_re,
                      "write": write_re, "read": read_re})
    return {"users": users, "vhosts": [{"name": "/"}], "permissions": perms}


def make_certificate(settings):
    """The node's server certificate, signed by the lab CA (kept when it exists)."""
    t = settings["tls_dir"]
    out = {"cacert": os.path.join(t, "cacert.pem"), "cert": os.path.join(t, "cert.pem"),
           "key": os.path.join(t, "key.pem")}
    if all(os.path.exists(p) for p in out.values()):
        return out
    os.makedirs(t, mode=0o700, exist_ok=True)
    ca = pki.make_ca(settings["ca_dir"])
    alt = ["DNS:localhost", "DNS:calab-broker"] + [f"IP:{ip}" for ip in settings["listen"]]
    pki._sign(ca, pki.subject("calab-broker"), out["cert"], out["key"], server=True,
              alt_names=alt)
    with open(ca[0]) as src, open(out["cacert"], "w") as dst:
        dst.write(src.read())
    return out


def ca_file(settings):
    """The CA file a client in the root namespace verifies the broker with."""
    return os.path.join(settings["ca_dir"], "cacert.pem") if settings.get("tls") else None


def client_ssl(settings, address="127.0.0.1", ca=None):
    """kombu/py-amqp ``ssl`` argument for a client of this node (False without TLS)."""
    if not settings.get("tls"):
        return False
    return {"ca_certs": ca or ca_file(settings), "cert_reqs": ssl.CERT_REQUIRED,
            "server_hostname": address}


def kombu_connection(settings, address="127.0.0.1", user=None, password=None,
                     ssl_opts=None, **kw):
    """A kombu Connection to this node (amqps with the lab CA when TLS is on)."""
    import kombu  # delayed, only the lab needs it

    url = "amqp://%s:%s@%s:%d//" % (user or settings["user"],
                                    password or settings["password"], address,
                                    settings["port"])
    sslarg = client_ssl(settings, address) if ssl_opts is None else ssl_opts
    return kombu.Connection(url, ssl=sslarg, **kw)


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def port_open(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def start_epmd(settings):
    """Start the lab's own epmd (foreground, new session), unless ours still runs."""
    if procutil.ref_alive(settings.get("epmd_ref")):
        return settings["epmd_ref"]
    if port_open("127.0.0.1", settings["epmd_port"]):
        raise BrokerError(f"port {settings['epmd_port']} (lab epmd) is taken by a "
                          "process the lab does not know")
    with open(settings["epmd_log"], "ab") as log:
        proc = subprocess.Popen(
            [EPMD, "-port", str(settings["epmd_port"]), "-address", "127.0.0.1"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=settings["dir"], close_fds=True)
    settings["epmd_ref"] = procutil.proc_ref(proc.pid)
    procutil.write_pidfile(settings["epmd_pid_file"], proc.pid)
    deadline = time.monotonic() + 5
    while not port_open("127.0.0.1", settings["epmd_port"]):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise BrokerError("lab epmd did not start, see " + settings["epmd_log"])
        time.sleep(0.01)
    return settings["epmd_ref"]


def start(settings):
    """Start the node (does not wait for it): returns at once, see wait_ready()."""
    for ip in settings["listen"]:
        if port_open(ip, settings["port"]):
            raise BrokerError(f"{ip}:{settings['port']} is already taken")
    write_config(settings)
    start_epmd(settings)
    try:
        os.unlink(settings["pid_file"])
    except FileNotFoundError:
        pass
    with open(settings["log"], "ab") as log:
        proc = subprocess.Popen(
            [RABBITMQ_SERVER], env=env(settings), stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=settings["dir"], close_fds=True)
    settings["server_ref"] = procutil.proc_ref(proc.pid)
    settings["beam_ref"] = None
    settings["_proc"] = proc  # not serialised (see Lab._save)
    return proc


def _beam_ref(settings):
    # The pid file may be stale (crash, reboot): only trust a beam.smp of this node
    # (its command line has "-home <broker dir>").
    return procutil.ref_from_pidfile(settings["pid_file"],
                                     must_contain=("beam", settings["dir"]))


def wait_ready(settings, timeout=60.0, check_login=True):
    """Wait until every listener accepts connections (and, by default, the lab user
    can log in over AMQP); records the beam.smp PID."""
    deadline = time.monotonic() + timeout
    server = settings.get("server_ref")
    while True:
        if settings.get("beam_ref") is None:
            settings["beam_ref"] = _beam_ref(settings)
        if all(port_open(ip, settings["port"]) for ip in settings["listen"]):
            break
        if server and not procutil.ref_alive(server):
            raise BrokerError("RabbitMQ node exited during start-up; see "
                              f"{settings['log']} and {settings['log_dir']}")
        if time.monotonic() > deadline:
            raise BrokerError(f"RabbitMQ node not ready after {timeout:.0f} s; see "
                              f"{settings['log_dir']}")
        time.sleep(0.05)
    if settings.get("beam_ref") is None:
        settings["beam_ref"] = _beam_ref(settings)
    if check_login:
        _check_login(settings, deadline)


def _check_login(settings, deadline):
    last = None
    while time.monotonic() < deadline:
        conn = kombu_connection(settings, connect_timeout=2)
        try:
            conn.connect()
            return
        except Exception as exc:  # the broker may still be finishing its boot
            last = exc
            time.sleep(0.1)
        finally:
            conn.release()
    raise BrokerError(f"cannot log in to the lab broker as {settings['user']}: {last}")


def queue_consumers(settings, queues, timeout=2.0):
    """{queue: number of consumers, or None if the queue does not exist} (passive
    declares over AMQP: no rabbitmqctl)."""
    import amqp.exceptions  # delayed, only the lab needs it

    result = {}
    with kombu_connection(settings, connect_timeout=timeout) as conn:
        conn.connect()
        for q in queues:
            ch = conn.channel()
            try:
                _name, _messages, consumers = ch.queue_declare(queue=q, passive=True)
                result[q] = consumers
            except amqp.exceptions.NotFound:
                result[q] = None
            finally:
                try:
                    ch.close()
                except Exception:  # the broker closed it after NotFound
                    pass
    return result


def transport_url(settings, address):
    return (f"rabbit://{settings['user']}:{settings['password']}@{address}:"
            f"{settings['port']}/")


def is_running(settings):
    return procutil.ref_alive(settings.get("beam_ref")) and port_open(
        "127.0.0.1", settings["port"])


def stop(settings, timeout=20.0, stop_epmd=True):
    """Stop this node only, by PID (SIGTERM = clean shutdown), then its wrapper script
    and, if asked, the lab's own epmd.  Tolerates processes that are already gone."""
    beam = settings.get("beam_ref") or _beam_ref(settings)
    refs = [r for r in (beam, settings.get("server_ref")) if r]
    if beam:
        procutil.send_signal(beam, signal.SIGTERM)
        left = procutil.wait_gone([beam], timeout)
        if left:
            procutil.terminate(left, timeout=1.0, sig=signal.SIGKILL)
    procutil.terminate(refs, timeout=3.0)
    # children of beam (erl_child_setup, inet_gethost) die with it
    settings["beam_ref"] = None
    settings["server_ref"] = None
    settings.pop("_proc", None)
    if stop_epmd:
        epmd = settings.get("epmd_ref") or procutil.ref_from_pidfile(
            settings.get("epmd_pid_file") or os.path.join(settings["dir"], "epmd.pid"),
            must_contain=("epmd", str(settings["epmd_port"])))
        procutil.terminate([epmd], timeout=2.0)
        settings["epmd_ref"] = None


def rabbitmqctl(settings, *args, timeout=60, check=True):
    """Run rabbitmqctl against the lab node (about 1 s per call)."""
    return subprocess.run([RABBITMQCTL, "-n", settings["node"], *args],
                          env=env(settings), capture_output=True, text=True,
                          timeout=timeout, check=check, cwd=settings["dir"])
