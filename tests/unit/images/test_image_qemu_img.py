"""computeagent.images.qemu_img against the real qemu-img."""
import os

import pytest

from computeagent import exception
from computeagent.images import qemu_img

from image_helpers import make_qcow2, make_raw


def test_info_raw_and_qcow2(env):
    raw = env.work / "a.raw"
    make_raw(raw, 1024 * 1024)
    info = qemu_img.info(str(raw), "raw")
    assert info["format"] == "raw"
    assert info["virtual-size"] == 1024 * 1024

    q = env.work / "a.qcow2"
    make_qcow2(q, "8M", write=False)
    info = qemu_img.info(str(q), "qcow2")
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 8 * 1024 * 1024


def test_info_never_probes_the_format(env):
    q = env.work / "a.qcow2"
    make_qcow2(q, "8M", write=False)
    # Opened as raw, a qcow2 is just bytes: qemu-img does not guess.
    info = qemu_img.info(str(q), "raw")
    assert info["format"] == "raw"
    assert info["virtual-size"] >= os.path.getsize(q)  # raw: rounded up to 512
    # And a raw file is not a qcow2.
    raw = env.work / "b.raw"
    make_raw(raw, 65536)
    with pytest.raises(exception.QemuImgError) as ei:
        qemu_img.info(str(raw), "qcow2")
    assert "qcow2" in ei.value.kwargs["stderr"]


def test_overlay_chain_resize_rebase(env):
    base = env.work / "base.raw"
    make_raw(base, 2 * 1024 * 1024)
    overlay = env.work / "disk"
    qemu_img.create_overlay(str(overlay), str(base), "raw", 4 * 1024 * 1024)
    chain = qemu_img.backing_chain(str(overlay), "qcow2")
    assert [c["filename"] for c in chain] == [str(overlay), str(base)]
    assert chain[0]["backing-filename-format"] == "raw"
    assert chain[0]["virtual-size"] == 4 * 1024 * 1024

    qemu_img.resize(str(overlay), 6 * 1024 * 1024)
    assert qemu_img.info(str(overlay), "qcow2")["virtual-size"] == 6 * 1024 * 1024

    # Refuses to overwrite an existing disk.
    with pytest.raises(exception.InvalidInput):
        qemu_img.create_overlay(str(overlay), str(base), "raw")

    moved = env.work / "moved.raw"
    os.rename(base, moved)
    qemu_img.rebase_unsafe(str(overlay), str(moved), "raw")
    info = qemu_img.info(str(overlay), "qcow2")
    assert info["backing-filename"] == str(moved)
    assert info["backing-filename-format"] == "raw"


def test_create_flat(env):
    disk = env.work / "flat"
    qemu_img.create_flat(str(disk), 2 * 1024 * 1024)
    info = qemu_img.info(str(disk), "qcow2")
    assert info["virtual-size"] == 2 * 1024 * 1024
    assert "backing-filename" not in info
    with pytest.raises(exception.InvalidInput):
        qemu_img.create_flat(str(disk), 2 * 1024 * 1024)
    with pytest.raises(exception.InvalidInput):
        qemu_img.create_flat(str(env.work / "x"), 0)


def test_convert_and_compare(env):
    raw = env.work / "a.raw"
    make_raw(raw, 1024 * 1024)
    q = env.work / "a.qcow2"
    qemu_img.convert(str(raw), "raw", str(q), "qcow2")
    assert qemu_img.info(str(q), "qcow2")["format"] == "qcow2"
    assert qemu_img.compare(str(raw), "raw", str(q), "qcow2") is True
    other = env.work / "b.raw"
    make_raw(other, 1024 * 1024, pattern=b"something else\n")
    assert qemu_img.compare(str(raw), "raw", str(other), "raw") is False


@pytest.mark.parametrize("fmt", ["vmdk", "qed", None, "QCOW2", "raw,x"])
def test_only_raw_and_qcow2(env, fmt):
    raw = env.work / "a.raw"
    make_raw(raw, 65536)
    with pytest.raises(exception.InvalidInput):
        qemu_img.info(str(raw), fmt)


@pytest.mark.parametrize("bad", ["/tmp/a,b", "/tmp/a\nb", "", "/tmp/\x00"])
def test_paths_with_option_syntax_refused(env, bad):
    with pytest.raises(exception.InvalidInput):
        qemu_img.info(bad, "raw")
    with pytest.raises(exception.InvalidInput):
        qemu_img.create_overlay(str(env.work / "o"), bad, "raw")


def test_relative_paths_made_absolute(env, monkeypatch):
    # "json:{...}" as a relative name would be a pseudo-protocol to qemu; made
    # absolute, it is only a (missing) file name.
    monkeypatch.chdir(env.work)
    with pytest.raises(exception.QemuImgError) as ei:
        qemu_img.info('json:{"driver":"null-co"}', "raw")
    assert str(env.work) in ei.value.kwargs["stderr"]


def test_errors_carry_stderr(env):
    with pytest.raises(exception.QemuImgError) as ei:
        qemu_img.info(str(env.work / "missing"), "raw")
    assert "No such file" in str(ei.value)
    assert ei.value.kwargs["exit_code"] == 1


def test_process_limits_and_explicit_format_on_every_call(env, set_conf,
                                                          monkeypatch):
    """A pass-through spy on the process start: qemu-img really runs, and every
    run has prlimit limits from CONF.qemu_img and an explicit format."""
    calls = []
    real = qemu_img._spawn

    def spy(cmd):
        calls.append((tuple(cmd), {}))
        return real(cmd)

    monkeypatch.setattr(qemu_img, "_spawn", spy)
    set_conf("address_space_limit_mb", 512, group="qemu_img")
    set_conf("cpu_time_limit", 7, group="qemu_img")
    set_conf("long_cpu_time_limit", 99, group="qemu_img")
    raw = env.work / "a.raw"
    make_raw(raw, 65536)
    q = env.work / "a.qcow2"
    disk = env.work / "disk"
    qemu_img.info(str(raw), "raw")
    qemu_img.convert(str(raw), "raw", str(q), "qcow2")
    qemu_img.create_overlay(str(disk), str(q), "qcow2")
    qemu_img.backing_chain(str(disk), "qcow2")
    qemu_img.resize(str(disk), 1024 * 1024)
    qemu_img.rebase_unsafe(str(disk), str(q), "qcow2")
    qemu_img.compare(str(raw), "raw", str(q), "qcow2")
    qemu_img.check(str(q), "qcow2")
    assert len(calls) == 8
    for full, kw in calls:
        # util-linux prlimit(1) applies the limits, then execs qemu-img
        assert full[:2] == ("prlimit", "--as=%d" % (512 * 1024 * 1024))
        assert full[3:5] == ("--", "qemu-img")
        assert "prlimit" not in kw
        cmd = full[4:]
        assert "-f" in cmd
        assert not any(a.startswith("-o") for a in cmd)
        long_running = cmd[1] in ("convert", "compare", "check")
        assert full[2] == "--cpu=%d" % (99 if long_running else 7)
        if cmd[1] == "info":
            assert "--force-share" in cmd and "--output=json" in cmd
        if "-b" in cmd:
            assert "-F" in cmd


def test_check_reports_corruption(env):
    q = env.work / "a.qcow2"
    make_qcow2(q, "4M")
    assert qemu_img.check(str(q), "qcow2")["exit-code"] == qemu_img.CHECK_OK
    os.truncate(q, os.path.getsize(q) // 2)
    report = qemu_img.check(str(q), "qcow2")
    assert report["exit-code"] == qemu_img.CHECK_CORRUPT
    assert report["corruptions"] > 0


def test_limits_really_apply(set_conf, monkeypatch):
    """The process qemu_img starts really has the limits (read from its own
    /proc/self/limits, with ``cat`` standing in for qemu-img)."""
    set_conf("address_space_limit_mb", 512, group="qemu_img")
    set_conf("cpu_time_limit", 7, group="qemu_img")
    monkeypatch.setattr(qemu_img, "QEMU_IMG", "cat")
    out, _err = qemu_img._execute(["/proc/self/limits"])
    lines = {line[:26].strip(): line[26:].split() for line in out.splitlines()[1:]}
    assert lines["Max address space"][:2] == [str(512 * 1024 * 1024)] * 2
    assert lines["Max cpu time"][:2] == ["7", "7"]
