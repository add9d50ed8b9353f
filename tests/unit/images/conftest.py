"""Fixtures of the images tests: config overrides, a real HTTP server, images.

Everything runs for real: qemu-img, the format inspector, HTTP over 127.0.0.1.
"""
import shutil

import pytest

from computeagent.conf import CONF

from image_helpers import ImageServer

if shutil.which("qemu-img") is None:  # pragma: no cover - bootstrap installs it
    pytest.skip("qemu-img is not installed", allow_module_level=True)


@pytest.fixture
def set_conf():
    """``set_conf(name, value, group=None)``; every override is cleared afterwards."""
    done = []

    def _set(name, value, group=None):
        CONF.set_override(name, value, group=group)
        done.append((name, group))

    yield _set
    for name, group in reversed(done):
        CONF.clear_override(name, group=group)


@pytest.fixture
def env(tmp_path, set_conf):
    """A tmp instances path, lock path and allowed file:// dir, set in CONF."""
    class Env:
        pass

    e = Env()
    e.instances = tmp_path / "instances"
    e.instances.mkdir()
    e.base_dir = e.instances / "_base"
    e.locks = tmp_path / "locks"
    e.files = tmp_path / "files"
    e.files.mkdir()
    e.outside = tmp_path / "outside"
    e.outside.mkdir()
    e.work = tmp_path / "work"
    e.work.mkdir()
    set_conf("instances_path", str(e.instances))
    set_conf("lock_path", str(e.locks))
    set_conf("allowed_file_dirs", [str(e.files)], group="image_cache")
    set_conf("download_timeout", 5, group="image_cache")
    return e


@pytest.fixture
def cache(env):
    from computeagent.images.cache import ImageCache
    return ImageCache()


@pytest.fixture
def http_server():
    server = ImageServer()
    yield server
    server.close()
