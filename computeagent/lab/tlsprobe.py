"""Does a libvirtd accept this TLS client?  Run inside a lab host (``lab.host_exec``)::

    python -m computeagent.lab.tlsprobe HOST PORT CACERT [CLIENTCERT CLIENTKEY]

A libvirtd that accepts the client's certificate sends one confirmation byte (1) right
after the handshake; one that refuses it (no certificate, another CA, a DN not in
``tls_allowed_dn_list``) closes the connection.  Prints JSON
``{"accepted": bool, "detail": str}``.  Without CLIENTCERT no certificate is sent
(what libvirt's own client cannot even try).
"""
import json
import socket
import ssl
import sys


def probe(host, port, cacert, cert=None, key=None, timeout=10.0):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cacert)
    if cert:
        ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as s:
                byte = s.recv(1)
    except (OSError, ssl.SSLError) as exc:
        return {"accepted": False, "detail": "%s: %s" % (type(exc).__name__, exc)}
    if byte == b"\x01":
        return {"accepted": True, "detail": "confirmation byte 1"}
    return {"accepted": False, "detail": "connection closed after handshake (%r)" % byte}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    json.dump(probe(*argv), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
