"""Verification of an instance disk's qcow2 backing chain.

After a live block migration (or a resize) the destination checks, with
``qemu-img info --backing-chain``, that the guest's disk is what the source had:
an overlay on the expected ``_base`` file, formats explicit, virtual size
unchanged, and the base's content digest equal to the source's. An overlay without
its backing file (the 2011 nova bug: the guest's files turn to garbage) fails here.
"""
from computeagent.images import qemu_img


def chain_problems(disk_path, expected_base, expected_base_fmt, expected_virtual_size,
                   base_digest=None, expected_digest=None):
    """Return a list of human-readable problems; empty means the chain is right."""
    try:
        chain = qemu_img.backing_chain(disk_path, "qcow2")
    except Exception as e:
        return ["qemu-img info --backing-chain failed: %s" % str(e)[:300]]
    problems = []
    top = chain[0]
    if top.get("format") != "qcow2":
        problems.append("disk format is %r, expected qcow2" % top.get("format"))
    backing = top.get("full-backing-filename") or top.get("backing-filename")
    if backing is None:
        problems.append("disk has no backing file (expected %s): the guest would "
                        "read zeroes/garbage where its base should be" % expected_base)
    elif backing != expected_base:
        problems.append("backing file is %s, expected %s" % (backing, expected_base))
    if backing is not None and top.get("backing-filename-format") != expected_base_fmt:
        problems.append("backing format is %r, expected explicit %r"
                        % (top.get("backing-filename-format"), expected_base_fmt))
    if top.get("virtual-size") != expected_virtual_size:
        problems.append("virtual size is %s, expected %s"
                        % (top.get("virtual-size"), expected_virtual_size))
    if len(chain) != 2:
        problems.append("chain depth is %d, expected 2 (overlay + base)" % len(chain))
    elif backing is not None:
        base = chain[1]
        if base.get("filename") != expected_base:
            problems.append("chain's base is %s, expected %s"
                            % (base.get("filename"), expected_base))
        if base.get("format") != expected_base_fmt:
            problems.append("base format is %r, expected %r"
                            % (base.get("format"), expected_base_fmt))
    if expected_digest is not None and base_digest != expected_digest:
        problems.append("base digest %s differs from the source's %s"
                        % (base_digest, expected_digest))
    return problems
