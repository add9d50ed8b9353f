"""console.log bound (issue 9): the newest output is kept, from a line start, behind
one marker line; a writer that appends (like QEMU, append='on') keeps appending after
the cut."""
import os

from computeagent.virt import driver


def test_small_file_untouched(tmp_path):
    p = tmp_path / "console.log"
    p.write_bytes(b"GUESTCHECK 1 OK\n")
    assert driver.bound_file(str(p), 1024) == 0
    assert p.read_bytes() == b"GUESTCHECK 1 OK\n"
    assert driver.bound_file(str(tmp_path / "missing"), 1024) == 0
    assert driver.bound_file(str(p), 0) == 0   # 0: unbounded


def test_cut_keeps_newest_lines_and_writer_keeps_appending(tmp_path):
    p = str(tmp_path / "console.log")
    qemu = open(p, "ab", buffering=0)        # O_APPEND, as QEMU opens it
    for n in range(1, 2001):
        qemu.write(b"GUESTCHECK %d OK\n" % n)
    size = os.path.getsize(p)
    dropped = driver.bound_file(p, 4096)
    assert dropped > 0
    data = open(p, "rb").read()
    assert len(data) <= 4096
    lines = data.splitlines()
    assert lines[0] == b"[computeagent: console log truncated, %d bytes dropped]" % dropped
    assert lines[1].startswith(b"GUESTCHECK ") and lines[-1] == b"GUESTCHECK 2000 OK"
    assert len(data) - len(lines[0]) - 1 == size - dropped   # whole lines kept
    qemu.write(b"GUESTCHECK 2001 OK\n")
    qemu.close()
    assert open(p, "rb").read().endswith(b"GUESTCHECK 2000 OK\nGUESTCHECK 2001 OK\n")
    assert driver.bound_file(p, 4096) == 0


def test_default_cap_is_one_mib():
    from oslo_config import cfg
    from computeagent.conf import libvirt as lvconf
    conf = cfg.ConfigOpts()
    lvconf.register_opts(conf)
    conf([])
    assert conf.libvirt.console_log_max_bytes == 1 << 20
