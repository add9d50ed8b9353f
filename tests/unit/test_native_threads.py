"""The agent runs on native threads only: a started agent has not imported eventlet
(oslo.service's threading backend is selected before any oslo import)."""
import sys

from tests.unit import agentproc

PROBE = r"""
import os, signal, sys, threading, time
log, out = sys.argv[1], sys.argv[2]
def probe():
    while not (os.path.exists(log) and "serving topic" in open(log).read()):
        time.sleep(0.1)
    from oslo_service import backend
    with open(out, "w") as f:
        f.write("backend=%s\n" % backend.get_backend_type().value)
        f.write("\n".join(sorted(m for m in sys.modules
                                 if m == "eventlet" or m.startswith("eventlet."))))
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=probe, daemon=True).start()
from computeagent.cmd import agent
sys.exit(agent.main(sys.argv[3:]))
"""


def test_started_agent_has_no_eventlet(tmp_path):
    conf = agentproc.write_config(tmp_path)
    out = tmp_path / "modules"
    proc = agentproc.start([sys.executable, "-W", "always", "-c", PROBE,
                            str(tmp_path / "agent.log"), str(out),
                            "--config-file", str(conf)])
    rc, _stdout, stderr = agentproc.stop_after(proc, out)
    assert rc == 0, stderr
    assert out.read_text() == "backend=threading\n"   # and no eventlet module at all
    assert "Eventlet" not in stderr and "eventlet is deprecated" not in stderr.lower()


def test_console_scripts_import_no_eventlet():
    code = ("import sys; import computeagent.cmd.agent, computeagent.cmd.ctl, "
            "computeagent.cmd.manage, computeagent.service, computeagent.rpc.server; "
            "print([m for m in sys.modules if m.split('.')[0] == 'eventlet'])")
    proc = agentproc.start([sys.executable, "-W", "always", "-c", code])
    out, err = proc.communicate(timeout=120)
    assert out.strip() == "[]", err
    assert "EventletDeprecationWarning" not in err
