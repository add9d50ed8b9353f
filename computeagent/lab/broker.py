"""The lab's private RabbitMQ node.

It runs beside any other RabbitMQ of the machine without touching it: its own node name,
its own Erlang cookie (HOME is the broker dir), its own epmd on its own port, its own
distribution port, its own config/env/plugins files (the machine's /etc/rabbitmq is never
read), its data, logs and pid file under the lab dir.  It listens for AMQP on
127.0.0.1:<port> (root namespace) and on the lab bridge's address (hosts).

The lab user is the node's *default user* (rabbitmq.conf ``default_user`` / ``default_pass``
/ ``default_permissions``), seeded when the node boots on an empty database: no slow
``rabbitmqctl`` round trips at start-up.  The node is started in the foreground (the
``rabbitmq-server`` script stays as a small shell parent of ``beam.smp``) in a new
session and stopped by PID: SIGTERM makes RabbitMQ shut down cleanly.

Measured on the 2-core lab machine: boot 4-5 s (fresh or not), stop ~1 s.
"""
import os
import secrets
import signal
import socket
import subprocess
import time

from computeagent.lab import procutil
from computeagent.lab.errors import LabError

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/bin/epmd"


class BrokerError(LabError):
    pass


def default_settings(broker_dir, listen_ips, port=5673, dist_port=25673, epmd_port=24369,
                     node="calab@localhost", user="computeagent", password=None):
    return {
        "dir": broker_dir,
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
    lines = [f"listeners.tcp.{i} = {ip}:{settings['port']}"
             for i, ip in enumerate(settings["listen"], start=1)]
    lines += [
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
    import kombu  # noqa: delayed, only the lab needs it

    # kombu's name of the transport oslo.messaging calls rabbit://
    url = "amqp://" + transport_url(settings, "127.0.0.1").split("://", 1)[1]
    last = None
    while time.monotonic() < deadline:
        conn = kombu.Connection(url, connect_timeout=2)
        try:
            conn.connect()
            return
        except Exception as exc:  # noqa: the broker may still be finishing its boot
            last = exc
            time.sleep(0.1)
        finally:
            conn.release()
    raise BrokerError(f"cannot log in to the lab broker as {settings['user']}: {last}")


def queue_consumers(settings, queues, timeout=2.0):
    """{queue: number of consumers, or None if the queue does not exist} (passive
    declares over AMQP: no rabbitmqctl)."""
    import amqp.exceptions  # noqa: delayed, only the lab needs it
    import kombu

    url = "amqp://" + transport_url(settings, "127.0.0.1").split("://", 1)[1]
    result = {}
    with kombu.Connection(url, connect_timeout=timeout) as conn:
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
                except Exception:  # noqa: the broker closed it after NotFound
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
