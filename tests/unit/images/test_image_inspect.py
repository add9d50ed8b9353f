"""computeagent.images.inspect: crafted images, real format inspector, real qemu-img."""
import re

import pytest

from computeagent import exception
from computeagent.images import inspect

from image_helpers import build_bad_corpus, build_good_corpus, make_raw


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    return build_bad_corpus(tmp_path_factory.mktemp("bad"))


def test_bad_corpus_rejected_each_with_its_own_reason(bad_corpus):
    assert len(bad_corpus) >= 10
    reasons = {}
    for case in bad_corpus:
        with pytest.raises(exception.ImageUnacceptable) as ei:
            inspect.inspect_image(str(case["path"]), case["disk_format"], "img-1")
        reason = ei.value.kwargs["reason"]
        assert ei.value.kwargs["image_id"] == "img-1"
        assert re.search(case["reason"], reason), (case["name"], reason)
        reasons[case["name"]] = reason
    # Every case is told apart by its reason.
    assert len(set(reasons.values())) == len(reasons), reasons


def test_good_images_accepted(tmp_path):
    for name, path, fmt, vsize in build_good_corpus(tmp_path):
        result = inspect.inspect_image(str(path), fmt, name)
        assert result == inspect.InspectResult(format=fmt, virtual_size=vsize), name


@pytest.mark.parametrize("fmt", ["vmdk", "iso", "ami", "", None])
def test_declared_format_must_be_raw_or_qcow2(tmp_path, fmt):
    p = tmp_path / "x"
    make_raw(p, 4096)
    with pytest.raises(exception.ImageUnacceptable,
                       match="disk_format .* is not supported"):
        inspect.inspect_image(str(p), fmt, "img")


def test_raw_virtual_size_limit(tmp_path, set_conf):
    set_conf("max_virtual_size_gb", 1, group="image_cache")
    p = tmp_path / "sparse.raw"
    with open(p, "wb") as f:
        f.truncate(1024 ** 3 + 512)  # sparse: costs nothing
    with pytest.raises(exception.ImageUnacceptable,
                       match="exceeds image_cache.max_virtual_size_gb"):
        inspect.inspect_image(str(p), "raw", "img")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(exception.ImageUnacceptable, match="not a regular file"):
        inspect.inspect_image(str(tmp_path), "raw", "img")
    with pytest.raises(exception.ImageUnacceptable, match="cannot be read"):
        inspect.inspect_image(str(tmp_path / "missing"), "raw", "img")
