"""The lab's certificates: one CA per lab and, per host, an x509 server and client
certificate signed by it (openssl, EC P-256: a few ms each).

Inside host ``h`` (its own mount namespace, ``<host dir>/etc/pki`` bind-mounted over
/etc/pki) they are where libvirt and QEMU look by default::

    /etc/pki/CA/cacert.pem                      the lab CA (libvirtd and the agent)
    /etc/pki/libvirt/servercert.pem             libvirtd's server certificate
    /etc/pki/libvirt/private/serverkey.pem
    /etc/pki/libvirt/clientcert.pem             the agent's client certificate
    /etc/pki/libvirt/private/clientkey.pem
    /etc/pki/qemu/{ca-cert,server-cert,server-key,client-cert,client-key}.pem
                                                QEMU's migration/NBD TLS (qemu.conf
                                                default_tls_x509_cert_dir)
    /etc/pki/qemu/dh-params.pem                 RFC 7919's ffdhe2048 group: without
                                                it QEMU generates DH parameters on
                                                the destination for every incoming
                                                TLS migration (0.3 s idle, seconds
                                                under load), before it can accept

Every certificate's subject is ``O=computeagent-lab,CN=<host>`` (the DN libvirtd's
``tls_allowed_dn_list`` names); server certificates carry the host's name and address
as subjectAltName (libvirt checks the name of the URI, QEMU the migration address).

``make_client(...)`` makes extra client sets for tests (another CA, a DN that is not
allowed) in a ``pkipath`` directory layout (cacert.pem, clientcert.pem, clientkey.pem).
"""
import os
import shutil
import subprocess
import tempfile

from computeagent.lab.errors import LabError

ORG = "computeagent-lab"
DAYS = 30


def subject(cn, org=ORG):
    return f"/O={org}/CN={cn}"


def allowed_dn(cn, org=ORG):
    """The DN of ``subject(cn)`` as libvirtd (gnutls_x509_crt_get_dn) prints it."""
    return f"O={org},CN={cn}"


def _openssl(*args, cwd=None):
    proc = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=60)
    if proc.returncode != 0:
        raise LabError("openssl %s failed: %s" % (args[0], proc.stderr.strip()))
    return proc.stdout


def _key(path):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", path)
    os.chmod(path, 0o600)


def make_ca(ca_dir, cn="computeagent-lab CA", org=ORG):
    """A self-signed CA in ``ca_dir`` (cacert.pem, cakey.pem); kept when it exists."""
    cert = os.path.join(ca_dir, "cacert.pem")
    key = os.path.join(ca_dir, "cakey.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return cert, key
    os.makedirs(ca_dir, mode=0o700, exist_ok=True)
    _key(key)
    _openssl("req", "-new", "-x509", "-key", key, "-out", cert, "-days", str(DAYS),
             "-subj", f"/O={org}/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _sign(ca, subj, out_cert, out_key, server, alt_names=()):
    ca_cert, ca_key = ca
    _key(out_key)
    with tempfile.TemporaryDirectory() as tmp:
        csr = os.path.join(tmp, "req.csr")
        ext = os.path.join(tmp, "ext.cnf")
        _openssl("req", "-new", "-key", out_key, "-out", csr, "-subj", subj)
        lines = ["basicConstraints=critical,CA:FALSE",
                 "keyUsage=critical,digitalSignature,keyEncipherment",
                 "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth")]
        if alt_names:
            lines.append("subjectAltName=" + ",".join(alt_names))
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        _openssl("x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
                 "-CAcreateserial", "-CAserial", os.path.join(tmp, "ca.srl"),
                 "-out", out_cert, "-days", str(DAYS), "-extfile", ext)
    os.chmod(out_cert, 0o644)


def make_host(ca, pki_root, name, ip):
    """The certificates of host ``name`` under ``pki_root`` (the host's /etc/pki)."""
    ca_cert, _ = ca
    for sub in ("CA", "libvirt/private", "qemu"):
        os.makedirs(os.path.join(pki_root, sub), exist_ok=True)
    os.chmod(os.path.join(pki_root, "libvirt/private"), 0o700)
    os.chmod(os.path.join(pki_root, "qemu"), 0o700)
    shutil.copyfile(ca_cert, os.path.join(pki_root, "CA/cacert.pem"))
    lv = os.path.join(pki_root, "libvirt")
    alt = [f"DNS:{name}", f"IP:{ip}"]
    _sign(ca, subject(name), os.path.join(lv, "servercert.pem"),
          os.path.join(lv, "private/serverkey.pem"), server=True, alt_names=alt)
    _sign(ca, subject(name), os.path.join(lv, "clientcert.pem"),
          os.path.join(lv, "private/clientkey.pem"), server=False)
    q = os.path.join(pki_root, "qemu")
    shutil.copyfile(ca_cert, os.path.join(q, "ca-cert.pem"))
    for src, dst in (("servercert.pem", "server-cert.pem"),
                     ("private/serverkey.pem", "server-key.pem"),
                     ("clientcert.pem", "client-cert.pem"),
                     ("private/clientkey.pem", "client-key.pem")):
        shutil.copyfile(os.path.join(lv, src), os.path.join(q, dst))
        os.chmod(os.path.join(q, dst), 0o600 if dst.endswith("key.pem") else 0o644)
    write_dh_params(os.path.join(q, "dh-params.pem"))


def write_dh_params(path):
    """A named, well-known group (RFC 7919 ffdhe2048, PKCS#3 PEM, as GnuTLS reads
    it): nothing to generate, nothing secret."""
    pem = _openssl("genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt",
                   "group:ffdhe2048")
    with open(path, "w") as f:
        f.write(pem)
    os.chmod(path, 0o644)


def make_client(ca, out_dir, cn, org=ORG):
    """A libvirt ``pkipath`` directory (cacert.pem, clientcert.pem, clientkey.pem)
    with a client certificate for ``cn`` signed by ``ca``."""
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    shutil.copyfile(ca[0], os.path.join(out_dir, "cacert.pem"))
    _sign(ca, subject(cn, org), os.path.join(out_dir, "clientcert.pem"),
          os.path.join(out_dir, "clientkey.pem"), server=False)
    return out_dir
