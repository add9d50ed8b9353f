"""The agents of the lab's hosts: their configuration files, start (inside the host),
readiness (a consumer on their RPC queue) and stop, all by PID."""
import configparser
import os
import signal
import subprocess
import time

from computeagent.lab import broker as _broker
from computeagent.lab import procutil
from computeagent.lab.errors import LabError
from computeagent.lab.layout import INSTANCES_PATH, STATE_PATH
from computeagent.lab.util import LOG, _tail


class AgentsMixin:
    """The hosts' agents (part of :class:`Lab`)."""

    def agent_command(self, name):
        h = self.host(name)
        return [self.state["agent_executable"], "--config-file", h["agent_config"]]

    def write_agent_config(self, name, extra_conf=None):
        """Write host ``name``'s agent config; ``extra_conf`` is {section: {opt: value}},
        merged over the lab defaults and the lab-wide ``extra_conf`` of ``up``.  It is
        remembered for the host and *replaces* the host's previous extra options
        (``{}`` clears them, None keeps them)."""
        h = self.host(name)
        cp = configparser.ConfigParser(interpolation=None)
        cp.optionxform = str
        conf = {
            "DEFAULT": {
                "host": name,
                "instances_path": INSTANCES_PATH,
                "state_path": STATE_PATH,
                # the agent's own broker user (computeagent-<host>), over amqps
                "transport_url": self.agent_transport_url(name),
                "sync_power_state_interval": "2",
            },
            "oslo_messaging_rabbit": self.rabbit_ssl_options(from_root=False),
            "libvirt": {
                "connection_uri": "qemu:///system",
                "virt_type": "qemu",
                "migration_uri_template": "qemu+tls://%(host)s/system",
            },
            "migration": {"tls": "true"},
            "image_cache": {
                "allowed_file_dirs": self.image_dir,
                # image URLs only to the lab's image server (issue 9)
                "allowed_url_hosts": "%s,calab-images" % self.state["network"]["gateway"],
            },
        }
        if extra_conf is not None:
            h["extra_conf"] = extra_conf  # replaces the host's previous extra options
        for extra in (self.state.get("extra_conf"), h.get("extra_conf")):
            for section, opts in (extra or {}).items():
                conf.setdefault(section, {}).update({k: str(v) for k, v in opts.items()})
        for section, opts in conf.items():
            if section != "DEFAULT" and not cp.has_section(section):
                cp.add_section(section)
            for k, v in opts.items():
                cp.set(section, k, v)
        # the agent's RPC server consumes from "<topic>.<host>" (oslo.messaging)
        h["rpc_queue"] = "%s.%s" % (conf["DEFAULT"].get("rpc_topic", "computeagent"),
                                    conf["DEFAULT"]["host"])
        os.makedirs(os.path.dirname(h["agent_config"]), exist_ok=True)
        tmp = h["agent_config"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"# written by computeagent.lab for lab host {name}\n")
            cp.write(f)
        os.replace(tmp, h["agent_config"])
        return h["agent_config"]

    def agent_pid(self, name):
        """PID of host ``name``'s agent if it runs, else None."""
        self.load()
        ref = self.host(name).get("agent_ref")
        return ref["pid"] if procutil.ref_alive(ref) else None

    def agent_log(self, name):
        return self.host(name)["agent_log"]

    def _spawn_agent(self, name, extra_conf=None):
        h = self.host(name)
        if procutil.ref_alive(h.get("agent_ref")):
            if extra_conf is not None:
                raise LabError(f"agent of {name} already runs; stop it to change its config")
            return None
        self.write_agent_config(name, extra_conf)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["PYTHONUNBUFFERED"] = "1"
        with open(h["agent_log"], "ab") as log:
            log.write(f"\n==== computeagent-lab: starting agent of {name} at "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
            log.flush()
            proc = self.host_popen(name, self.agent_command(name), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=env)
        self._keep(proc)
        h["agent_ref"] = procutil.proc_ref(proc.pid)
        self._save()
        return proc

    def _check_agents_started(self, names, wait):
        deadline = time.monotonic() + wait
        while True:
            dead = [n for n in names if not procutil.ref_alive(self.host(n).get("agent_ref"))]
            if dead:
                n = dead[0]
                raise LabError(f"agent of {n} exited at start-up; {self.agent_log(n)}:\n"
                               + _tail(self.agent_log(n)))
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def _wait_agents_serving(self, names, timeout):
        """Wait until each agent's RPC queue ("<rpc_topic>.<host>") has a consumer on
        the lab broker: before that, a cast to it is silently dropped."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending:
            for n in list(pending):
                if not procutil.ref_alive(self.host(n).get("agent_ref")):
                    raise LabError(f"agent of {n} exited at start-up; {self.agent_log(n)}:\n"
                                   + _tail(self.agent_log(n)))
            queues = {self.host(n)["rpc_queue"]: n for n in pending}
            try:
                counts = _broker.queue_consumers(self.running_broker_node(), list(queues))
            except Exception as exc:  # broker restarting: keep polling
                LOG.debug("queue check failed: %s", exc)
                counts = {}
            for q, n in queues.items():
                if counts.get(q):
                    pending.remove(n)
            if not pending:
                return
            if time.monotonic() > deadline:
                n = pending[0]
                raise LabError(f"agent of {n} does not consume from "
                               f"{self.host(n)['rpc_queue']} after {timeout:.0f} s; "
                               f"{self.agent_log(n)}:\n" + _tail(self.agent_log(n)))
            time.sleep(0.1)

    def start_agent(self, name, extra_conf=None, wait=1.0, serving_timeout=60.0):
        """Start host ``name``'s agent (``computeagent --config-file <hostdir>/agent/
        computeagent.conf`` inside the host, output to ``<hostdir>/agent.log``) and
        return its PID once its RPC server consumes from its queue ("<rpc_topic>.
        <host>" on the lab broker; ``serving_timeout`` None skips that wait and only
        checks that it is still alive after ``wait`` seconds).  An agent that already
        runs is left alone."""
        with self._locked():
            self._spawn_agent(name, extra_conf)
        if serving_timeout is None:
            self._check_agents_started([name], wait)
        else:
            self._wait_agents_serving([name], serving_timeout)
        return self.agent_pid(name)

    def reconfigure_agent(self, name, extra_conf, timeout=30.0):
        """Rewrite host ``name``'s agent config with ``extra_conf`` (as ``start_agent``)
        and SIGHUP the running agent; return once its log says it reloaded.  Only the
        agent's mutable options change this way (``[debug] crash_at``/``pause_at``,
        ``[migration] bandwidth_mib``, log levels): a second or two less than a
        restart, and the agent's state (connections, threads) stays as it is."""
        h = self.host(name)
        ref = h.get("agent_ref")
        if not procutil.ref_alive(ref):
            raise LabError(f"agent of {name} does not run")
        log = self.agent_log(name)
        start = os.path.getsize(log)
        self.write_agent_config(name, extra_conf)
        procutil.send_signal(ref, signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(log, "rb") as f:
                f.seek(start)
                if b"SIGHUP: configuration reloaded" in f.read():
                    return
            if not procutil.ref_alive(ref):
                raise LabError(f"agent of {name} exited on SIGHUP; {log}:\n" + _tail(log))
            time.sleep(0.05)
        raise LabError(f"agent of {name} did not reload within {timeout:.0f} s")

    def stop_agent(self, name, sig=signal.SIGTERM, timeout=15.0):
        """Send ``sig`` to host ``name``'s agent.  For SIGTERM/SIGINT/SIGQUIT/SIGKILL
        wait until it is gone (SIGKILL after ``timeout``); other signals (SIGHUP,
        SIGSTOP, ...) are only sent.  Returns True if a signal was sent."""
        with self._locked():
            h = self.host(name)
            ref = h.get("agent_ref")
            if not procutil.ref_alive(ref):
                h["agent_ref"] = None
                self._save()
                return False
            if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
                if sig != signal.SIGKILL:
                    procutil.send_signal(ref, signal.SIGCONT)  # in case it was stopped
                procutil.terminate([ref], timeout=timeout, sig=sig)
                h["agent_ref"] = None
                self._save()
            else:
                procutil.send_signal(ref, sig)
            return True
    def _start_agents(self, names, serving_timeout=60.0):
        started = [n for n in names if self._spawn_agent(n) is not None]
        if started:
            self._wait_agents_serving(started, serving_timeout)

