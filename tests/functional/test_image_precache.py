"""Image pre-caching (RPC 1.5 cache_images / get_image_cache) on the real stack:
three libvirtd hosts, the lab image server counting GETs, the agents' own cache
cleaner, a real guest migrated onto a pre-cached host."""
import os
import uuid as uuidlib

import pytest

from computeagent.lab import guest
from tests.functional.conftest import (TCG_LIVE_MIGRATION, delete_everywhere, host_file_text, host_run,
                                       make_instance, publish_image, wait_for,
                                       wait_state)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

HOSTS = ("hosta", "hostb", "hostc")
INSTANCES = "/var/lib/computeagent/instances"
MANAGE_TIMEOUT = 120


def rows(agent, ctxt, host):
    return {r["image_id"]: r for r in agent.get_image_cache(ctxt, host)}


def wait_done(agent, ctxt, host, image_id, timeout=120):
    def done():
        r = rows(agent, ctxt, host).get(image_id)
        return r if r and r["state"] in ("cached", "failed") else None
    return wait_for(done, timeout=timeout, what="pre-cache of %s on %s"
                    % (image_id, host))


def exists_on(lab, host, path):
    return lab.host_exec(host, ["test", "-e", path], check=False).returncode == 0


def part_files(lab, host):
    out = host_run(lab, host, ["ls", "-a", INSTANCES + "/_base"], check=False)
    return [n for n in out.split() if ".part-" in n]


def clean_cache(lab, host):
    manage = os.path.join(os.path.dirname(lab.state["agent_executable"]),
                          "computeagent-manage")
    return host_run(lab, host, [manage, "--config-file", lab.host(host)["agent_config"],
                                "image-cache", "clean", "--min-age", "0"])


def random_image(lab, tmp_path, tag, size=3 * 1024 * 1024 + 17):
    src = tmp_path / ("%s.raw" % tag)
    src.write_bytes(os.urandom(size))
    return publish_image(lab, str(src), "pc-%s-%s.raw" % (tag, uuidlib.uuid4().hex[:8]),
                         "raw")


def test_three_hosts_precache_once_each_then_migration_makes_no_get(
        lab, agent, ctxt, guest_artifacts):
    img = publish_image(lab, guest_artifacts.base_raw,
                        "pc-guest-%s.raw" % uuidlib.uuid4().hex[:8], "raw")
    fname = os.path.basename(img["url"])
    lab.reset_image_stats()
    # every host told three times, all at once
    for _ in range(3):
        for host in HOSTS:
            agent.cache_images(ctxt, host, [img])
    got = {h: wait_done(agent, ctxt, h, img["id"]) for h in HOSTS}
    for host, row in got.items():
        assert row["state"] == "cached", row
        assert row["digest"] == img["hash"], row
        assert row["bytes_done"] == row["bytes_total"] == img["size"]
        assert row["source"] == "image-server" and row["path"], row
        assert exists_on(lab, host, row["path"])
    assert len({r["digest"] for r in got.values()}) == 1
    assert lab.image_get_count(fname) == len(HOSTS)   # one GET per host

    # a guest spawned on A, migrated to C and on to B: no more GETs anywhere
    inst = make_instance(img)
    uuid = inst["uuid"]
    try:
        agent.spawn(ctxt, "hosta", inst)
        wait_state(agent, ctxt, "hosta", uuid, "ACTIVE")
        for src, dest in (("hosta", "hostc"), ("hostc", "hostb")):
            mid = "mig-" + uuidlib.uuid4().hex[:12]
            agent.live_migrate(ctxt, src, uuid, dest, mid)
            mig = wait_for(lambda: (lambda m: m if m["status"] in (
                "completed", "failed", "cancelled") else None)(
                agent.get_migration(ctxt, src, mid)), timeout=180, what="migration")
            assert mig["status"] == "completed", mig
            wait_state(agent, ctxt, dest, uuid, "ACTIVE")
        check = guest.wait_for_check(
            lambda: host_file_text(lab, "hostb", "%s/%s/console.log" % (INSTANCES, uuid)),
            timeout=90)
        assert check.ok, check
        assert lab.image_get_count(fname) == len(HOSTS)   # still: 0 GETs since
    finally:
        delete_everywhere(agent, ctxt, uuid, hosts=HOSTS)


def test_pinned_base_survives_clean_unpinned_goes(lab, agent, ctxt, tmp_path):
    pinned = random_image(lab, tmp_path, "pinned")
    loose = random_image(lab, tmp_path, "loose")
    agent.cache_images(ctxt, "hostb", [pinned], pin_until="2999-01-01T00:00:00Z")
    agent.cache_images(ctxt, "hostb", [loose])
    p = wait_done(agent, ctxt, "hostb", pinned["id"])
    q = wait_done(agent, ctxt, "hostb", loose["id"])
    assert p["state"] == q["state"] == "cached"
    assert p["pinned_until"] == "2999-01-01T00:00:00Z" and q["pinned_until"] is None
    clean_cache(lab, "hostb")
    assert exists_on(lab, "hostb", p["path"])
    assert not exists_on(lab, "hostb", q["path"])
    now = rows(agent, ctxt, "hostb")
    assert now[pinned["id"]]["state"] == "cached"
    assert loose["id"] not in now
    # a pin in the past unpins: the next clean removes it
    agent.cache_images(ctxt, "hostb", [pinned], pin_until="2000-01-01T00:00:00Z")
    wait_for(lambda: rows(agent, ctxt, "hostb")[pinned["id"]]["pinned_until"] is None,
             what="unpin")
    out = clean_cache(lab, "hostb")
    # what the clean said (a busy base or an unreadable chain keeps it) if it did not go
    assert not exists_on(lab, "hostb", p["path"]), out


@pytest.mark.parametrize("tamper", ["bitflip", "truncated", "oversize"])
def test_tampered_image_precache_fails_nothing_cached(lab, agent, ctxt, tmp_path,
                                                      tamper):
    img = random_image(lab, tmp_path, tamper)
    fname = os.path.basename(img["url"])
    served = os.path.join(lab.image_dir, fname)
    if tamper == "bitflip":
        with open(served, "r+b") as f:
            f.seek(img["size"] // 2)
            b = f.read(1)
            f.seek(img["size"] // 2)
            f.write(bytes([b[0] ^ 0x01]))
        expect = "sha256 mismatch"
    elif tamper == "truncated":
        lab.set_image_fault(fname, truncate=img["size"] // 2)
        expect = "shorter than the declared size"
    else:
        with open(served, "ab") as f:
            f.write(b"\x01" * 4096)
        expect = "longer than the declared size"
    try:
        agent.cache_images(ctxt, "hostc", [img])
        row = wait_done(agent, ctxt, "hostc", img["id"])
    finally:
        lab.clear_image_faults()
    assert row["state"] == "failed", row
    assert expect in row["failure_reason"], row
    assert row["digest"] is None and row["path"] is None
    path = host_run(lab, "hostc", ["sh", "-c", "ls %s/_base" % INSTANCES], check=False)
    import hashlib
    name = hashlib.sha1(img["id"].encode()).hexdigest()
    assert name not in path.split()
    assert not [p for p in part_files(lab, "hostc") if name in p]


def test_image_source_gone_fetches_from_peer(lab, agent, ctxt, tmp_path):
    img = random_image(lab, tmp_path, "peer")
    fname = os.path.basename(img["url"])
    agent.cache_images(ctxt, "hosta", [img])
    theirs = wait_done(agent, ctxt, "hosta", img["id"])
    assert theirs["state"] == "cached", theirs
    lab.set_image_fault(fname, status=503)   # the image source is gone
    lab.reset_image_stats()
    try:
        agent.cache_images(ctxt, "hostc", [img], peers=["hostb", "hosta"])
        row = wait_done(agent, ctxt, "hostc", img["id"])
    finally:
        lab.clear_image_faults()
    assert row["state"] == "cached", row
    assert row["source"] == "peer:hosta", row        # hostb does not have it
    assert row["digest"] == theirs["digest"] == img["hash"]
    assert exists_on(lab, "hostc", row["path"])
    assert lab.image_get_count(fname) == 1           # the one refused attempt
    # without peers the same failure is reported as it is
    other = random_image(lab, tmp_path, "nopeer")
    lab.set_image_fault(os.path.basename(other["url"]), status=503)
    try:
        agent.cache_images(ctxt, "hostc", [other])
        row = wait_done(agent, ctxt, "hostc", other["id"])
    finally:
        lab.clear_image_faults()
    assert row["state"] == "failed" and "HTTP 503" in row["failure_reason"], row


def test_migration_waits_for_a_running_precache_no_second_get(
        lab, agent, ctxt, guest_artifacts):
    img = publish_image(lab, guest_artifacts.base_raw,
                        "pc-wait-%s.raw" % uuidlib.uuid4().hex[:8], "raw")
    fname = os.path.basename(img["url"])
    inst = make_instance(img)
    uuid = inst["uuid"]
    try:
        agent.spawn(ctxt, "hosta", inst)
        wait_state(agent, ctxt, "hosta", uuid, "ACTIVE")
        lab.set_image_fault(fname, rate=16 * 1024 * 1024)   # a slow image source
        lab.reset_image_stats()
        agent.cache_images(ctxt, "hostb", [img])
        wait_for(lambda: (rows(agent, ctxt, "hostb").get(img["id"]) or {}).get(
            "bytes_done"), what="pre-cache under way")
        # the migration's pre_live_migration waits for that download, then reuses it
        mid = "mig-" + uuidlib.uuid4().hex[:12]
        agent.live_migrate(ctxt, "hosta", uuid, "hostb", mid)
        mig = wait_for(lambda: (lambda m: m if m["status"] in (
            "completed", "failed", "cancelled") else None)(
            agent.get_migration(ctxt, "hosta", mid)), timeout=180, what="migration")
        assert mig["status"] == "completed", mig
        wait_state(agent, ctxt, "hostb", uuid, "ACTIVE")
        row = rows(agent, ctxt, "hostb")[img["id"]]
        assert row["state"] == "cached" and row["digest"] == img["hash"], row
        assert lab.image_get_count(fname) == 1
    finally:
        lab.clear_image_faults()
        delete_everywhere(agent, ctxt, uuid, hosts=HOSTS)
