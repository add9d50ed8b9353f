"""How this host reaches its peers' libvirtd, and whether that is secure (pure
functions, no libvirt calls).

Secure by default: peer URIs are ``qemu+tls://`` with this host's client certificate
(libvirtd on the peer checks it against the cloud's CA and its
``tls_allowed_dn_list``), and QEMU's migration streams use QEMU-native TLS
(``[migration] tls``).  Anything else needs ``[libvirt] allow_insecure_transport``.
"""
import urllib.parse

from computeagent import exception

#: libvirt transports that authenticate the peer and encrypt the connection
SECURE_TRANSPORTS = ("tls", "ssh", "libssh", "libssh2", "unix")


def uri_transport(uri):
    """The transport of a libvirt URI: ``qemu+tcp://h/system`` -> ``tcp``.  A URI
    with a host and no explicit transport uses TLS (libvirt's rule)."""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme
    if "+" in scheme:
        return scheme.split("+", 1)[1]
    return "tls" if parts.netloc else "unix"


def peer_uri(template, host, pkipath=None):
    """The libvirt URI of peer ``host``; with ``pkipath`` (TLS only) the URI names
    the directory of this host's client certificate set."""
    uri = template % {"host": host}
    if pkipath and uri_transport(uri) == "tls":
        parts = urllib.parse.urlsplit(uri)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = [(k, v) for k, v in query if k != "pkipath"] + [("pkipath", pkipath)]
        uri = urllib.parse.urlunsplit(parts._replace(
            query=urllib.parse.urlencode(query, safe="/")))
    return uri


def insecure_settings(conf):
    """What in ``conf`` sends hypervisor traffic without authentication or
    encryption (an empty list when nothing does)."""
    problems = []
    template = conf.libvirt.migration_uri_template
    transport = uri_transport(template % {"host": "peer"})
    if transport not in SECURE_TRANSPORTS:
        problems.append("[libvirt] migration_uri_template %s uses transport %r: no "
                        "authentication, no encryption (anyone reaching the peer's "
                        "libvirtd is root there; bases and overlays cross in clear)"
                        % (template, transport))
    if not conf.migration.tls:
        problems.append("[migration] tls = false: guest memory and disk cross the "
                        "network unencrypted during live migrations")
    return problems


def check(conf, log):
    """At start-up: refuse insecure settings unless ``allow_insecure_transport``,
    and then say so loudly.  Returns the list of insecure settings."""
    problems = insecure_settings(conf)
    if not problems:
        return problems
    if not conf.libvirt.allow_insecure_transport:
        raise exception.InsecureTransport(reason="; ".join(problems)
                                          + " (set [libvirt] allow_insecure_transport "
                                          "= true to run like this anyway)")
    for p in problems:
        log.warning("INSECURE TRANSPORT (allow_insecure_transport = true): %s", p)
    return problems
