"""Issue 9: between hypervisors libvirt speaks only TLS with client certificates of
the lab CA whose DN is in libvirtd's tls_allowed_dn_list; the agent's own connection
(its config, its peer URI) works; insecure settings are refused unless opted in."""
import json
import os
import sys
import tempfile

import pytest

from computeagent.lab import pki
from computeagent.lab.errors import LabError
from computeagent.lab.layout import LIBVIRT_TCP_PORT, LIBVIRT_TLS_PORT

PY = sys.executable
pytestmark = pytest.mark.realstack


def _probe(lab, host, peer, port, cacert, cert=None, key=None):
    argv = [PY, "-m", "computeagent.lab.tlsprobe", peer, str(port), cacert]
    if cert:
        argv += [cert, key]
    return json.loads(lab.host_exec(host, argv).stdout)


def _virsh_version(lab, host, uri):
    return lab.host_exec(host, ["virsh", "-c", uri, "version"], check=False)


@pytest.fixture(scope="module")
def client_sets(lab):
    """pkipath directories: the lab CA with a DN not allowed; another CA with an
    allowed-looking DN ("hosta"); the lab CA with hosta's DN (control)."""
    root = tempfile.mkdtemp(prefix="issue9-pki-")
    ca = pki.make_ca(lab.pki_ca_dir())
    other = pki.make_ca(os.path.join(root, "other-ca"), cn="someone else's CA")
    sets = {"bad_dn": pki.make_client(ca, os.path.join(root, "bad-dn"), "intruder"),
            "other_ca": pki.make_client(other, os.path.join(root, "other-ca-client"),
                                        "hosta"),
            "good": pki.make_client(ca, os.path.join(root, "good"), "hosta")}
    yield sets


def test_client_without_certificate_is_refused(lab):
    r = _probe(lab, "hosta", "hostb", LIBVIRT_TLS_PORT, "/etc/pki/CA/cacert.pem")
    assert not r["accepted"], r


def test_client_of_another_ca_is_refused(lab, client_sets):
    d = client_sets["other_ca"]
    # no_verify=1: the client skips its own check of the server, so that the refusal
    # seen is the server's
    res = _virsh_version(lab, "hosta", f"qemu+tls://hostb/system?pkipath={d}&no_verify=1")
    assert res.returncode != 0
    assert "Running hypervisor" not in res.stdout
    r = _probe(lab, "hosta", "hostb", LIBVIRT_TLS_PORT, "/etc/pki/CA/cacert.pem",
               d + "/clientcert.pem", d + "/clientkey.pem")
    assert not r["accepted"], r


def test_client_dn_not_in_allow_list_is_refused(lab, client_sets):
    d = client_sets["bad_dn"]
    res = _virsh_version(lab, "hosta", f"qemu+tls://hostb/system?pkipath={d}")
    assert res.returncode != 0
    assert "Running hypervisor" not in res.stdout
    r = _probe(lab, "hosta", "hostb", LIBVIRT_TLS_PORT, "/etc/pki/CA/cacert.pem",
               d + "/clientcert.pem", d + "/clientkey.pem")
    assert not r["accepted"], r
    with open(lab.host("hostb")["libvirtd_log"]) as f:
        assert "tls_allowed_dn_list" in f.read()


def test_allowed_client_of_the_lab_ca_is_accepted(lab, client_sets):
    d = client_sets["good"]
    res = _virsh_version(lab, "hosta", f"qemu+tls://hostb/system?pkipath={d}")
    assert res.returncode == 0, res.stderr
    assert "Running hypervisor" in res.stdout


def test_no_plain_tcp_listener(lab):
    r = _probe(lab, "hosta", "hostb", LIBVIRT_TCP_PORT, "/etc/pki/CA/cacert.pem",
               "/etc/pki/libvirt/clientcert.pem", "/etc/pki/libvirt/private/clientkey.pem")
    assert not r["accepted"] and "refused" in r["detail"].lower(), r
    res = _virsh_version(lab, "hosta", "qemu+tcp://hostb/system")
    assert res.returncode != 0


def test_agents_own_peer_connection_works(lab):
    """The agent's configuration and its own code build the peer URI; libvirt opens
    it with the host's client certificate and reaches the peer's libvirtd."""
    code = ("import sys, libvirt\n"
            "from computeagent.conf import CONF\n"
            "from computeagent.virt import driver\n"
            "CONF(['--config-file', sys.argv[1]], project='computeagent',"
            " default_config_files=[])\n"
            "uri = driver.LibvirtDriver(CONF, None).peer_uri('hostb')\n"
            "c = libvirt.open(uri)\n"
            "print(uri, c.getHostname())\n")
    out = lab.host_exec("hosta", [PY, "-c", code, lab.host("hosta")["agent_config"]])
    uri, hostname = out.stdout.split()
    assert uri.startswith("qemu+tls://hostb/")
    assert hostname == "hostb"


def _log_since(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_agent_refuses_insecure_transport_unless_opted_in(lab):
    # the last host: hostc in the 3-host lab, hostb after a module that rebuilt the
    # lab with two (seen: the message-bus module's cluster runs before this one)
    host = lab.host_names[-1]
    log = lab.agent_log(host)
    lab.stop_agent(host)
    try:
        off = os.path.getsize(log)
        insecure = {"libvirt": {"migration_uri_template": "qemu+tcp://%(host)s/system"}}
        with pytest.raises(LabError):
            lab.start_agent(host, extra_conf=insecure, wait=5.0, serving_timeout=None)
        text = _log_since(log, off)
        assert "Insecure hypervisor transport refused" in text
        lab.stop_agent(host)
        off = os.path.getsize(log)
        opted_in = {"libvirt": {"migration_uri_template": "qemu+tcp://%(host)s/system",
                                "allow_insecure_transport": "true"},
                    "migration": {"tls": "false"}}
        lab.start_agent(host, extra_conf=opted_in)
        text = _log_since(log, off)
        assert "INSECURE TRANSPORT" in text and "WARNING" in text
        assert "qemu+tcp" in text and "tls = false" in text
    finally:
        lab.stop_agent(host)
        lab.start_agent(host, extra_conf={})
