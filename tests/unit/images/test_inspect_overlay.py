"""inspect_overlay: a resize overlay from a peer, checked before qemu-img sees it
(issue 9).  Real qemu-img crafts the files; the code under test never runs it."""
import os

import pytest

from computeagent import exception
from computeagent.images import inspect
from tests.unit.images.image_helpers import _set_bits, make_qcow2, qemu_img


@pytest.fixture
def base_dir(tmp_path):
    d = tmp_path / "instances" / "_base"
    d.mkdir(parents=True)
    (d / "abc").write_bytes(b"\0" * 1024 * 1024)
    return str(d)


def test_overlay_on_a_base_in_base_dir(tmp_path, base_dir):
    disk = str(tmp_path / "disk")
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b",
             os.path.join(base_dir, "abc"), disk, "4M")
    assert inspect.inspect_overlay(disk, base_dir) == os.path.join(base_dir, "abc")


def test_overlay_without_backing(tmp_path, base_dir):
    disk = str(tmp_path / "disk")
    make_qcow2(tmp_path / "disk", "1M", write=False)
    assert inspect.inspect_overlay(disk, base_dir) is None


@pytest.mark.parametrize("backing", [
    "/etc/shadow", "/var/lib/computeagent/state/computeagent.db", "abc",
    "{base}/../../etc/passwd", "{base}/sub/abc", "json:{{\"file.filename\": \"/x\"}}"])
def test_backing_outside_base_refused(tmp_path, base_dir, backing):
    disk = str(tmp_path / "disk")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b",
             backing.format(base=base_dir), disk, "4M")
    with pytest.raises(exception.ImageUnacceptable, match="outside"):
        inspect.inspect_overlay(disk, base_dir)


def test_data_file_refused(tmp_path, base_dir):
    disk = str(tmp_path / "disk")
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "data_file=%s" % (tmp_path / "data"), disk, "4M")
    with pytest.raises(exception.ImageUnacceptable, match="external data file"):
        inspect.inspect_overlay(disk, base_dir)


def test_unknown_feature_encryption_symlink_raw_refused(tmp_path, base_dir):
    disk = str(tmp_path / "disk")
    make_qcow2(tmp_path / "disk", "1M", write=False)
    _set_bits(disk, 0x48 + 7, 0x20)
    with pytest.raises(exception.ImageUnacceptable, match="unknown incompatible"):
        inspect.inspect_overlay(disk, base_dir)
    enc = str(tmp_path / "enc")
    make_qcow2(tmp_path / "enc", "1M", write=False)
    _set_bits(enc, 35, 0x01)
    with pytest.raises(exception.ImageUnacceptable, match="encrypted"):
        inspect.inspect_overlay(enc, base_dir)
    link = str(tmp_path / "link")
    os.symlink(os.path.join(base_dir, "abc"), link)
    with pytest.raises(exception.ImageUnacceptable, match="regular file"):
        inspect.inspect_overlay(link, base_dir)
    with pytest.raises(exception.ImageUnacceptable, match="expected qcow2"):
        inspect.inspect_overlay(os.path.join(base_dir, "abc"), base_dir)
