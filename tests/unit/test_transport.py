"""Peer URIs and the start-up check of insecure transports (issue 9)."""
import logging

import pytest
from oslo_config import cfg

from computeagent import exception
from computeagent.conf import libvirt as libvirt_conf
from computeagent.conf import migration as migration_conf
from computeagent.virt import transport


@pytest.fixture
def conf():
    c = cfg.ConfigOpts()
    libvirt_conf.register_opts(c)
    migration_conf.register_opts(c)
    c([], default_config_files=[])
    return c


def test_defaults_are_secure(conf):
    assert conf.libvirt.migration_uri_template.startswith("qemu+tls://")
    assert conf.migration.tls is True
    assert conf.libvirt.allow_insecure_transport is False
    assert transport.insecure_settings(conf) == []
    assert transport.check(conf, logging.getLogger("t")) == []


@pytest.mark.parametrize("uri,expected", [
    ("qemu+tls://h/system", "tls"), ("qemu+tcp://h/system", "tcp"),
    ("qemu://h/system", "tls"), ("qemu:///system", "unix"),
    ("qemu+ssh://root@h/system", "ssh")])
def test_uri_transport(uri, expected):
    assert transport.uri_transport(uri) == expected


def test_peer_uri_with_pkipath():
    assert transport.peer_uri("qemu+tls://%(host)s/system", "hostb") == \
        "qemu+tls://hostb/system"
    assert transport.peer_uri("qemu+tls://%(host)s/system", "hostb", "/etc/ca/x") == \
        "qemu+tls://hostb/system?pkipath=/etc/ca/x"
    assert transport.peer_uri("qemu+tls://%(host)s/system?no_tty=1&pkipath=/old",
                              "hostb", "/new") == \
        "qemu+tls://hostb/system?no_tty=1&pkipath=/new"
    # pkipath means nothing to ssh: left out
    assert transport.peer_uri("qemu+ssh://%(host)s/system", "hostb", "/p") == \
        "qemu+ssh://hostb/system"


def test_plain_tcp_refused_without_opt_in(conf):
    conf.set_override("migration_uri_template", "qemu+tcp://%(host)s/system", "libvirt")
    with pytest.raises(exception.InsecureTransport) as ei:
        transport.check(conf, logging.getLogger("t"))
    assert "qemu+tcp" in str(ei.value) and "allow_insecure_transport" in str(ei.value)


def test_unencrypted_migration_refused_without_opt_in(conf):
    conf.set_override("tls", False, "migration")
    with pytest.raises(exception.InsecureTransport) as ei:
        transport.check(conf, logging.getLogger("t"))
    assert "tls = false" in str(ei.value)


def test_opt_in_warns_loudly(conf, caplog):
    conf.set_override("migration_uri_template", "qemu+tcp://%(host)s/system", "libvirt")
    conf.set_override("tls", False, "migration")
    conf.set_override("allow_insecure_transport", True, "libvirt")
    with caplog.at_level(logging.WARNING):
        problems = transport.check(conf, logging.getLogger("t"))
    assert len(problems) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("INSECURE TRANSPORT" in r.getMessage() for r in warnings)
