"""Small helpers of the lab: running commands, writing files atomically, log tails,
the libvirt module and an HTTP opener that ignores proxies."""
import logging
import os
import subprocess
import urllib.request

from computeagent.lab.errors import LabError

LOG = logging.getLogger("computeagent.lab")


def _no_proxy_opener():
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _run(argv, check=True, capture=True, input=None, timeout=60, **kw):
    try:
        return subprocess.run(argv, check=check, capture_output=capture, text=True,
                              input=input, timeout=timeout, **kw)
    except subprocess.CalledProcessError as exc:
        raise LabError(f"{' '.join(map(str, argv))} failed ({exc.returncode}): "
                       f"{(exc.stderr or '').strip()}") from exc


def _write(path, text, mode=None):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _libvirt():
    import libvirt  # delayed: the module needs the C library

    # The default handler prints every error on stderr (we poll while daemons start).
    libvirt.registerErrorHandler(lambda ctx, err: None, None)
    return libvirt
