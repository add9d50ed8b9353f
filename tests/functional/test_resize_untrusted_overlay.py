"""Issue 9: a resize overlay arriving from a peer is untrusted.  A hostile (or
broken) source sends an overlay whose qcow2 header names an external data file, or
a backing file outside _base; the destination refuses it with the format
inspector's reason *before* qemu-img opens it (the data file is a FIFO: qemu-img
opening it would block, and nobody ever opens it), and nothing of it stays."""
import errno
import hashlib
import os
import subprocess
import tempfile
import time
import uuid as uuidlib

import pytest

from tests.functional.conftest import make_instance, virsh

pytestmark = pytest.mark.realstack

B = "hostb"
INSTANCES = "/var/lib/computeagent/instances"
GiB = 1024 ** 3


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def _fifo_has_reader(path):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        assert e.errno == errno.ENXIO
        return False
    os.close(fd)
    return True


def _craft(kind, workdir, fifo, base_path):
    disk = os.path.join(workdir, "disk")
    if kind == "data-file":
        # qemu-img creates the data file <tmp>/d; the header then gets the FIFO's
        # name <tmp>/f (same length) in its place
        data = os.path.join(workdir, "d")
        assert len(data) == len(fifo)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        "data_file=%s" % data, disk, "1G"], check=True)
        with open(disk, "rb") as f:
            blob = f.read()
        assert blob.count(data.encode()) == 1
        with open(disk, "wb") as f:
            f.write(blob.replace(data.encode(), fifo.encode()))
        os.unlink(data)
    else:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-F", "raw",
                        "-b", "/var/lib/computeagent/state/computeagent.db", disk, "1G"],
                       check=True)
    return disk


@pytest.mark.parametrize("kind", ["data-file", "backing-outside-base"])
def test_hostile_overlay_refused_before_qemu_img_nothing_stays(lab, transport, ctxt,
                                                               guest_image, kind):
    from computeagent.rpc import api
    agent = api.ComputeAgentAPI(transport, timeout=30, own_host="hosta")  # the "source"
    inst = make_instance(guest_image, name="hostile-overlay")
    uuid = inst["uuid"]
    mid = "mig-" + uuidlib.uuid4().hex[:12]
    flavor = inst["flavor"]
    migration = {"id": mid, "instance_uuid": uuid, "kind": "resize", "source": "hosta",
                 "dest": B, "status": "preparing", "step": "preparing",
                 "old_flavor": flavor, "new_flavor": flavor}
    disk_info = {"path": "%s/%s/disk" % (INSTANCES, uuid), "format": "qcow2",
                 "virtual_size": GiB, "backing_file": None, "backing_format": "raw",
                 "image_id": guest_image["id"], "base_digest": guest_image["hash"]}
    agent.prep_resize(ctxt, B, inst, migration, disk_info)
    tmp = tempfile.mkdtemp(prefix="issue9-overlay-", dir="/tmp")
    fifo = os.path.join(tmp, "f")
    os.mkfifo(fifo)
    try:
        crafted = _craft(kind, tmp, fifo, None)
        dst = lab.host_path(B, "%s/%s/disk" % (INSTANCES, uuid))
        with open(crafted, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
        t0 = time.monotonic()
        with pytest.raises(Exception) as ei:
            agent.finish_resize(ctxt, B, inst, migration,
                                dict(disk_info, overlay_sha256=_sha256(dst)), timeout=30)
        elapsed = time.monotonic() - t0
        msg = str(ei.value)
        if kind == "data-file":
            assert "data file" in msg, msg
        else:
            assert "backing file" in msg and "_base" in msg, msg
        assert elapsed < 15, elapsed
        assert not _fifo_has_reader(fifo)      # qemu-img never opened it
        assert not os.path.exists(dst)         # the overlay is gone at once
        assert "instance-" + uuid not in virsh(lab, B, "list", "--all", "--name").split()
        agent.resize_rollback_at_dest(ctxt, B, uuid, mid)
        assert not os.path.exists(os.path.dirname(dst))
    finally:
        subprocess.run(["rm", "-rf", tmp])
