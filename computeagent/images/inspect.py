"""Deep inspection of a downloaded image before qemu-img ever opens it.

The oslo.utils format inspector reads the file in Python, recognises every format
it knows (raw, qcow2, vhd, vhdx, vmdk, vdi, qed, iso, gpt, luks) and runs each
format's safety checks. Only raw and qcow2 are accepted, the content must match
the declared ``disk_format`` (CVE-2024-40767), and a qcow2 must have no backing
file, no external data file (CVE-2024-32498), no unknown incompatible feature and
no encryption. Only once all of that passed is qemu-img run on the file, with the
verified format: ``check`` for a qcow2 (truncation, corruption) and ``info`` to
cross-check format, virtual size and the absence of a backing/data file.
"""
import dataclasses
import logging
import os
import stat
import struct

from oslo_utils.imageutils import format_inspector
from oslo_utils import units

from computeagent import exception
from computeagent.conf import CONF
from computeagent.images import qemu_img

LOG = logging.getLogger(__name__)

ALLOWED_FORMATS = ("raw", "qcow2")

QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_HEADER_MIN = 104  # version 3 header length; v2 headers are 72 bytes
_QCOW2_CRYPT_OFFSET = 32


@dataclasses.dataclass(frozen=True)
class InspectResult:
    format: str          # "raw" or "qcow2", equal to the declared format
    virtual_size: int    # bytes


# Reasons per failed oslo.utils safety check, most specific first.
_CHECK_REASONS = {
    "backing_file": "qcow2 image has a backing file",
    "data_file": "qcow2 image has an external data file",
    "unknown_features": "qcow2 image has an unsupported version or unknown "
                        "incompatible features",
    "mbr": "partition table is invalid",
}


def _reject(image_id, reason):
    LOG.warning("Image %s rejected: %s", image_id, reason)
    return exception.ImageUnacceptable(image_id=image_id, reason=reason)


def _read_head(path, size=4096):
    with open(path, "rb") as f:
        return f.read(size)


def _qcow2_backing_name(head):
    """Backing file name recorded in a qcow2 header (bytes), or None."""
    try:
        bf_offset, bf_size = struct.unpack(">QI", head[8:20])
    except struct.error:
        return None
    if not bf_offset:
        return None
    if bf_offset >= len(head):
        return b""
    return head[bf_offset:bf_offset + min(bf_size, 1023)]


def inspect_image(path, declared_format, image_id):
    """Inspect the file at ``path``; return :class:`InspectResult` or raise.

    :raises computeagent.exception.ImageUnacceptable: with a reason naming the
        precise problem.
    """
    if declared_format not in ALLOWED_FORMATS:
        raise _reject(image_id, "disk_format %r is not supported (only %s)"
                      % (declared_format, ", ".join(ALLOWED_FORMATS)))
    try:
        st = os.stat(path)
    except OSError as e:
        raise _reject(image_id, "image file cannot be read: %s" % e)
    if not stat.S_ISREG(st.st_mode):
        raise _reject(image_id, "image is not a regular file")

    try:
        inspector = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError as e:
        raise _reject(image_id, "format detection failed: %s" % e)
    except Exception as e:  # the inspector parses hostile data
        LOG.exception("Format inspector crashed on image %s", image_id)
        raise _reject(image_id, "format detection failed: %s" % e)
    if inspector is None:
        raise _reject(image_id, "format detection did not reach a decision")

    detected = str(inspector)
    head = _read_head(path)
    if detected == "gpt":
        # An MBR/GPT partition table: a partitioned raw disk (nova does the same).
        # Its 'mbr' safety check still runs below.
        detected = "raw"
    if detected == "raw" and head.startswith(QCOW2_MAGIC):
        raise _reject(image_id, "truncated qcow2: the header is incomplete "
                                "(%d bytes)" % st.st_size)
    if detected not in ALLOWED_FORMATS:
        raise _reject(image_id, "content is %s, which is not allowed (only %s)"
                      % (detected, ", ".join(ALLOWED_FORMATS)))
    if detected != declared_format:
        raise _reject(image_id, "content is %s but disk_format is %s"
                      % (detected, declared_format))

    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        reasons = []
        for name in sorted(e.failures, key=lambda n: (n not in _CHECK_REASONS, n)):
            reason = _CHECK_REASONS.get(name)
            if name == "backing_file":
                bname = _qcow2_backing_name(head)
                if bname is not None and bname.lstrip().startswith(b"json:"):
                    reason = "qcow2 image has a json: backing file specification"
                elif bname:
                    reason += " (%r)" % bname[:64]
            elif reason is None:
                reason = "safety check %s failed" % name
            if name == "mbr":
                reason += ": %s" % e.failures[name]
            reasons.append(reason)
        raise _reject(image_id, "; ".join(reasons))
    except format_inspector.ImageFormatError as e:
        raise _reject(image_id, "image cannot be safety-checked: %s" % e)

    if detected == "qcow2":
        if len(head) < _QCOW2_HEADER_MIN:
            raise _reject(image_id, "truncated qcow2: the header is incomplete "
                                    "(%d bytes)" % st.st_size)
        (crypt_method,) = struct.unpack(
            ">I", head[_QCOW2_CRYPT_OFFSET:_QCOW2_CRYPT_OFFSET + 4])
        if crypt_method:
            raise _reject(image_id, "qcow2 image is encrypted")
        virtual_size = inspector.virtual_size
        if virtual_size <= 0:
            raise _reject(image_id, "qcow2 image declares no virtual size")
    else:
        virtual_size = st.st_size

    limit = CONF.image_cache.max_virtual_size_gb * units.Gi
    if virtual_size > limit:
        raise _reject(image_id, "virtual size %d bytes exceeds "
                                "image_cache.max_virtual_size_gb (%d GiB)"
                      % (virtual_size, CONF.image_cache.max_virtual_size_gb))

    # The file passed every Python-side check: qemu-img may now open it, with the
    # verified format and under process limits.
    try:
        if detected == "qcow2":
            report = qemu_img.check(path, "qcow2")
            if report["exit-code"] == qemu_img.CHECK_CORRUPT:
                raise _reject(image_id, "qcow2 image is corrupt or truncated "
                                        "(qemu-img check: %s corruptions, %s errors)"
                              % (report.get("corruptions", 0),
                                 report.get("check-errors", 0)))
        data = qemu_img.info(path, detected)
    except exception.QemuImgError as e:
        raise _reject(image_id, "qemu-img cannot read the image: %s"
                      % e.kwargs.get("stderr", e))
    fmt_data = (data.get("format-specific") or {}).get("data") or {}
    if data.get("format") != detected:
        raise _reject(image_id, "qemu-img reports format %r, expected %s"
                      % (data.get("format"), detected))
    if data.get("backing-filename") or data.get("full-backing-filename"):
        raise _reject(image_id, "qcow2 image has a backing file")
    if fmt_data.get("data-file") or fmt_data.get("data-file-raw"):
        raise _reject(image_id, "qcow2 image has an external data file")
    if data.get("encrypted"):
        raise _reject(image_id, "qcow2 image is encrypted")
    if fmt_data.get("corrupt"):
        raise _reject(image_id, "qcow2 image is marked corrupt")
    qemu_size = data.get("virtual-size")
    if detected == "raw" and isinstance(qemu_size, int) and (
            virtual_size <= qemu_size < virtual_size + 512):
        virtual_size = qemu_size  # qemu rounds a raw file up to whole sectors
    if qemu_size != virtual_size:
        raise _reject(image_id, "qemu-img reports virtual size %r, expected %d"
                      % (qemu_size, virtual_size))
    return InspectResult(format=detected, virtual_size=virtual_size)


def inspect_overlay(path, base_dir, what="overlay"):
    """Inspect an instance overlay that arrived from a peer (a resize) before
    qemu-img or QEMU open it: a regular qcow2 file (not a link), no external data
    file, no unknown incompatible feature, no encryption, and a backing file -- if
    any -- that is a plain path directly inside ``base_dir``.  Returns the backing
    file name (str, or None); raises ImageUnacceptable with the reason."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise _reject(what, "cannot be read: %s" % e)
    if not stat.S_ISREG(st.st_mode):
        raise _reject(what, "is not a regular file")
    try:
        inspector = format_inspector.detect_file_format(path)
    except Exception as e:  # the inspector parses hostile data
        raise _reject(what, "format detection failed: %s" % e)
    if inspector is None or str(inspector) != "qcow2":
        raise _reject(what, "content is %s, expected qcow2" % inspector)
    head = _read_head(path)
    if len(head) < _QCOW2_HEADER_MIN:
        raise _reject(what, "truncated qcow2: the header is incomplete")
    try:
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as e:
        others = [n for n in e.failures if n != "backing_file"]
        if others:
            raise _reject(what, "; ".join(
                _CHECK_REASONS.get(n, "safety check %s failed" % n)
                for n in sorted(others, key=lambda n: (n not in _CHECK_REASONS, n))))
    except format_inspector.ImageFormatError as e:
        raise _reject(what, "cannot be safety-checked: %s" % e)
    (crypt_method,) = struct.unpack(
        ">I", head[_QCOW2_CRYPT_OFFSET:_QCOW2_CRYPT_OFFSET + 4])
    if crypt_method:
        raise _reject(what, "qcow2 image is encrypted")
    raw = _qcow2_backing_name(head)
    if raw is None:
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _reject(what, "backing file name is not UTF-8")
    base_dir = os.path.normpath(base_dir)
    if (not name or name.lstrip().startswith("json:") or not os.path.isabs(name)
            or os.path.normpath(name) != name or "\0" in name
            or os.path.dirname(name) != base_dir):
        raise _reject(what, "backing file %r is outside %s (_base)"
                      % (name[:200], base_dir))
    return name
