"""The only place in the agent that runs ``qemu-img``.

Rules every call here follows (see docs/prior-art: CVE-2015-5162, CVE-2024-40767,
CVE-2026-24708, CVE-2015-7548):

* every process runs under util-linux ``prlimit`` (address space and CPU time
  from ``[qemu_img]``, soft = hard, the same limits oslo's ``ProcessLimits``
  set). oslo's own ``prlimit=`` starts a Python interpreter per call (40-60 ms);
  ``prlimit(1)`` sets the limits and execs qemu-img for ~1 ms. The process is
  started with :func:`subprocess.run`, not ``processutils.execute``: its
  ``preexec_fn`` (SIGPIPE back to default, which ``restore_signals`` already does)
  makes Python fork() the whole agent instead of vfork(), 21 ms against 8.5 ms per
  call in a 120 MiB process with 20 threads (``tools/bench_qemu_img_calls.py``);
  a failure still raises oslo's ``ProcessExecutionError`` inside this module;
* the format is always explicit: ``-f`` for the image, ``-F`` for a backing file
  or the second image of ``compare``, ``-O`` for an output; only ``raw`` and
  ``qcow2`` are accepted, qemu-img never probes;
* ``info`` always runs with ``--force-share --output=json``;
* no ``-o`` option string is ever built, and every path is made absolute (so a
  ``json:``/``nbd:`` pseudo-protocol prefix cannot be smuggled in) and must not
  contain a comma, a newline or a NUL byte;
* a failure raises :class:`computeagent.exception.QemuImgError` carrying
  qemu-img's stderr; a refused argument raises
  :class:`computeagent.exception.InvalidInput`.
"""
import json
import logging
import os
import subprocess

from oslo_concurrency import processutils
from oslo_utils import units

from computeagent import exception
from computeagent.conf import CONF

LOG = logging.getLogger(__name__)

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"  # util-linux
ALLOWED_FORMATS = ("raw", "qcow2")

# Exit codes of ``qemu-img check``: 0 clean, 1 check not completed, 2 corruptions,
# 3 leaked clusters only (harmless), 63 format does not support checks.
CHECK_OK = 0
CHECK_FAILED = 1
CHECK_CORRUPT = 2
CHECK_LEAKS = 3
CHECK_UNSUPPORTED = 63


def _limits(long_running=False):
    """``prlimit`` arguments putting qemu-img under the ``[qemu_img]`` limits."""
    cpu = (CONF.qemu_img.long_cpu_time_limit if long_running
           else CONF.qemu_img.cpu_time_limit)
    return [PRLIMIT, "--as=%d" % (CONF.qemu_img.address_space_limit_mb * units.Mi),
            "--cpu=%d" % cpu, "--"]


def _spawn(cmd):
    """Run ``cmd`` (no shell, no stdin, every other fd closed); CompletedProcess."""
    return subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                          close_fds=True, check=False)


def _execute(args, long_running=False, ok_codes=(0,)):
    """``qemu-img *args`` under the limits; (stdout, stderr). Raises
    ProcessExecutionError for an exit code outside ``ok_codes``."""
    cmd = _limits(long_running) + [QEMU_IMG] + [str(a) for a in args]
    LOG.debug("Running cmd (subprocess): %s", " ".join(cmd))
    proc = _spawn(cmd)
    out, err = os.fsdecode(proc.stdout), os.fsdecode(proc.stderr)
    if proc.returncode not in ok_codes:
        raise processutils.ProcessExecutionError(
            exit_code=proc.returncode, stdout=out, stderr=err, cmd=" ".join(cmd))
    return out, err


def _fmt(fmt, what="format"):
    if fmt not in ALLOWED_FORMATS:
        raise exception.InvalidInput(
            reason="%s %r is not allowed (only %s)"
                   % (what, fmt, ", ".join(ALLOWED_FORMATS)))
    return fmt


def _path(path, what="path"):
    """Return ``path`` made absolute, refusing anything qemu-img could misread."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise exception.InvalidInput(reason="%s must be a non-empty string" % what)
    for bad in (",", "\n", "\r", "\x00"):
        if bad in path:
            raise exception.InvalidInput(
                reason="%s %r contains a forbidden character %r" % (what, path, bad))
    # An absolute path starts with '/', so qemu never reads a "protocol:" prefix.
    return os.path.abspath(path)


def _size(size_bytes):
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) or size_bytes <= 0:
        raise exception.InvalidInput(
            reason="size must be a positive integer number of bytes, not %r"
                   % (size_bytes,))
    return str(size_bytes)


def _error(args, e):
    """QemuImgError for a failed ``qemu-img *args`` (ProcessExecutionError/OSError)."""
    cmd = [QEMU_IMG] + list(args)
    if isinstance(e, processutils.ProcessExecutionError):
        stderr = (e.stderr or "").strip()
        return exception.QemuImgError(
            reason="qemu-img %s exited %s: %s"
                   % (args[0], e.exit_code, stderr or "(no stderr)"),
            cmd=cmd, exit_code=e.exit_code, stderr=stderr)
    return exception.QemuImgError(reason="cannot run qemu-img: %s" % e,
                                  cmd=cmd, exit_code=None, stderr="")


def _run(args, long_running=False, ok_codes=(0,)):
    """Run ``qemu-img *args`` under prlimit; return its stdout."""
    try:
        out, _err = _execute(args, long_running, ok_codes)
    except (processutils.ProcessExecutionError, OSError) as e:
        raise _error(args, e)
    return out


def _json(out, args):
    try:
        return json.loads(out)
    except ValueError as e:
        raise exception.QemuImgError(
            reason="qemu-img %s returned unparsable JSON: %s" % (args[0], e),
            cmd=[QEMU_IMG] + list(args), exit_code=0, stderr="")


def info(path, fmt):
    """``qemu-img info -f fmt --force-share --output=json path`` -> dict.

    Only the image itself is opened (no backing chain).
    """
    args = ["info", "-f", _fmt(fmt), "--force-share", "--output=json",
            _path(path)]
    out = _run(args)
    data = _json(out, args)
    if not isinstance(data, dict):
        raise exception.QemuImgError(reason="qemu-img info did not return an object")
    return data


def backing_chain(path, fmt):
    """``qemu-img info --backing-chain`` -> list of info dicts, top image first.

    ``fmt`` is the format of the top image; the formats of the backing files are
    the ones recorded in each overlay (``-F`` at creation).
    """
    args = ["info", "-f", _fmt(fmt), "--force-share", "--output=json",
            "--backing-chain", _path(path)]
    out = _run(args)
    data = _json(out, args)
    if isinstance(data, dict):  # defensive: a single image
        data = [data]
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise exception.QemuImgError(
            reason="qemu-img info --backing-chain did not return a list")
    return data


def check(path, fmt):
    """``qemu-img check -f fmt --output=json path`` -> dict.

    The dict is qemu-img's report plus ``exit-code`` (see ``CHECK_*``). Corruption
    (exit code 2) and leaks (3) are returned, not raised; only a check that could
    not run at all raises QemuImgError.
    """
    args = ["check", "-f", _fmt(fmt), "--force-share", "--output=json",
            _path(path)]
    out = _run(args, long_running=True,
               ok_codes=(CHECK_OK, CHECK_CORRUPT, CHECK_LEAKS))
    # ``execute`` does not return the exit code; re-derive it from the report.
    data = _json(out, args)
    if not isinstance(data, dict):
        raise exception.QemuImgError(reason="qemu-img check did not return an object")
    if data.get("corruptions") or data.get("check-errors"):
        data["exit-code"] = CHECK_CORRUPT
    elif data.get("leaks"):
        data["exit-code"] = CHECK_LEAKS
    else:
        data["exit-code"] = CHECK_OK
    return data


def create_overlay(path, backing_path, backing_fmt, size_bytes=None):
    """Create a qcow2 overlay ``path`` on top of ``backing_path``.

    ``qemu-img create -f qcow2 -b <backing> -F <backing_fmt> <path> [size]``. The
    backing path is recorded as given, made absolute. ``size_bytes`` None keeps the
    backing file's virtual size. Refuses to overwrite an existing ``path``.
    """
    path = _path(path)
    backing_path = _path(backing_path, "backing path")
    args = ["create", "-f", "qcow2", "-b", backing_path,
            "-F", _fmt(backing_fmt, "backing format"), path]
    if size_bytes is not None:
        args.append(_size(size_bytes))
    if os.path.lexists(path):
        raise exception.InvalidInput(reason="%s already exists" % path)
    _run(args)
    os.chmod(path, 0o600)  # the guest's disk: QEMU's user only (issue 9)


def create_flat(path, size_bytes, fmt="qcow2"):
    """Create an empty image without a backing file (``qemu-img create -f fmt``).

    Refuses to overwrite an existing ``path``.
    """
    path = _path(path)
    args = ["create", "-f", _fmt(fmt), path, _size(size_bytes)]
    if os.path.lexists(path):
        raise exception.InvalidInput(reason="%s already exists" % path)
    _run(args)
    os.chmod(path, 0o600)


def resize(path, size_bytes, fmt="qcow2"):
    """``qemu-img resize -f fmt path size`` (grow only: no ``--shrink``)."""
    _run(["resize", "-f", _fmt(fmt), _path(path), _size(size_bytes)])


def rebase_unsafe(path, backing_path, backing_fmt):
    """Rewrite the backing file name of the qcow2 ``path`` without copying data.

    ``qemu-img rebase -f qcow2 -u -b <backing> -F <backing_fmt> <path>``.
    """
    _run(["rebase", "-f", "qcow2", "-u", "-b", _path(backing_path, "backing path"),
          "-F", _fmt(backing_fmt, "backing format"), _path(path)])


def convert(src, src_fmt, dst, dst_fmt):
    """``qemu-img convert -f src_fmt -O dst_fmt src dst`` (flattens any chain)."""
    _run(["convert", "-f", _fmt(src_fmt), "-O", _fmt(dst_fmt), _path(src),
          _path(dst)], long_running=True)


def compare(a, a_fmt, b, b_fmt, strict=False):
    """True when the guest-visible contents of ``a`` and ``b`` are identical.

    ``qemu-img compare -f a_fmt -F b_fmt -U [-s] a b``. Without ``strict`` an image
    may be larger than the other when its extra part reads as zeroes.
    """
    args = ["compare", "-f", _fmt(a_fmt), "-F", _fmt(b_fmt), "--force-share"]
    if strict:
        args.append("-s")
    args += [_path(a), _path(b)]
    try:
        _execute(args, long_running=True)
    except processutils.ProcessExecutionError as e:
        if e.exit_code == 1:
            return False
        raise _error(args, e)
    except OSError as e:
        raise _error(args, e)
    return True
