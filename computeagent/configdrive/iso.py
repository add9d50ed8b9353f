"""Writing and reading the config drive image (ISO 9660 + Rock Ridge + Joliet, volume
label ``config-2``) with pycdlib - never by hand-packing bytes.

pycdlib stamps the current time into the volume and directory records, so two builds
of the same content differ in a few bytes; what is compared between builds and between
hosts is :func:`content_digest`, a sha256 over the sorted (path, sha256 of the file)
pairs read back from the image itself.

    python -m computeagent.configdrive.iso show PATH     # files + digest as JSON
"""
import hashlib
import io
import json
import os
import sys
import tempfile

import pycdlib

from computeagent.configdrive import content

LABEL = "config-2"
# The drive holds two small JSON files and at most 64 KiB of user data: anything much
# larger is not one of ours.
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_FILE_BYTES = 1024 * 1024

# ISO 9660 names (8.3, upper case); Linux shows the Rock Ridge names.
_ISO_NAMES = {content.META_DATA: "META_DAT.JSO;1",
              content.NETWORK_DATA: "NETWORK_.JSO;1",
              content.USER_DATA: "USER_DAT.;1"}
_DIRS = ("openstack", "openstack/latest")


class ConfigDriveError(Exception):
    """An image that is not a config drive this agent could have written."""


def _iso_path(rel):
    parts = rel.split("/")
    dirs = [p.upper() for p in parts[:-1]]
    return "/" + "/".join(dirs + [_ISO_NAMES[rel]])


def write(path, files):
    """Write ``files`` ({relative path: bytes}, paths from :mod:`content`) as a config
    drive at ``path``, atomically (temporary file in the same directory, then rename),
    mode 0644. Returns the content digest."""
    unknown = set(files) - set(_ISO_NAMES)
    if unknown:
        raise ConfigDriveError("not a config drive file: %s" % sorted(unknown))
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=LABEL, sys_ident="LINUX",
            joliet=3, rock_ridge="1.09")
    for d in _DIRS:
        iso.add_directory("/" + d.upper(), rr_name=d.rsplit("/", 1)[-1],
                          joliet_path="/" + d)
    for rel in sorted(files):
        data = files[rel]
        iso.add_fp(io.BytesIO(data), len(data), _iso_path(rel),
                   rr_name=rel.rsplit("/", 1)[-1], joliet_path="/" + rel)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".disk.config-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            iso.write_fp(f)
            f.flush()
            os.fsync(f.fileno())
        iso.close()
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return files_digest(files)


def read(path):
    """The config drive files of the image at ``path`` ({relative path: bytes}).
    Raises :class:`ConfigDriveError` for anything that is not a small ISO labelled
    ``config-2`` whose files are within the limits."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ConfigDriveError("cannot read %s: %s" % (path, e))
    if size > MAX_IMAGE_BYTES:
        raise ConfigDriveError("%s is %d bytes, more than a config drive" % (path, size))
    iso = pycdlib.PyCdlib()
    try:
        with open(path, "rb") as f:
            iso.open_fp(f)
            try:
                label = iso.pvd.volume_identifier.decode("ascii", "replace").strip()
                if label != LABEL:
                    raise ConfigDriveError("%s has label %r, not %r" % (path, label, LABEL))
                out = {}
                for rel in content.FILES:
                    try:
                        rec = iso.get_record(rr_path="/" + rel)
                    except pycdlib.pycdlibexception.PyCdlibException:
                        continue
                    if rec.get_data_length() > MAX_FILE_BYTES:
                        raise ConfigDriveError("%s in %s is too large" % (rel, path))
                    buf = io.BytesIO()
                    iso.get_file_from_iso_fp(buf, rr_path="/" + rel)
                    out[rel] = buf.getvalue()
            finally:
                iso.close()
    except pycdlib.pycdlibexception.PyCdlibException as e:
        raise ConfigDriveError("%s is not a readable ISO 9660 image: %s" % (path, e))
    if content.META_DATA not in out or content.NETWORK_DATA not in out:
        raise ConfigDriveError("%s lacks meta_data.json or network_data.json" % path)
    return out


def files_digest(files):
    """sha256 over the sorted (path, sha256 of content) pairs."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(("%s %s\n" % (rel, hashlib.sha256(files[rel]).hexdigest())).encode())
    return h.hexdigest()


def content_digest(path):
    return files_digest(read(path))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "show":
        print("usage: python -m computeagent.configdrive.iso show PATH", file=sys.stderr)
        return 2
    try:
        files = read(argv[1])
    except ConfigDriveError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    json.dump({"digest": files_digest(files),
               "files": {k: v.decode("utf-8", "replace") for k, v in files.items()}},
              sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
