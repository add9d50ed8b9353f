"""computeagent.images.cache: real HTTP, real qemu-img, real locks and processes."""
import hashlib
import json
import multiprocessing
import os
import re
import stat
import threading
import time

import pytest

from computeagent import exception
from computeagent.images import cache as cache_mod
from computeagent.images import qemu_img

from image_helpers import (base_entries, build_bad_corpus, build_good_corpus,
                           image_for, make_qcow2, make_raw)

UUID1 = "11111111-1111-4111-8111-111111111111"
UUID2 = "22222222-2222-4222-8222-222222222222"
DAY = 86400


def _serve(http_server, path, body, disk_format="raw", image_id=None, **kw):
    url = http_server.add(path, body, **kw)
    return image_for(image_id or "img" + path.replace("/", "-"), url, body, disk_format)


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


# -- ensure: good images -------------------------------------------------------------

def test_ensure_good_images_and_sidecar(env, cache, http_server):
    for name, path, fmt, vsize in build_good_corpus(env.work):
        body = path.read_bytes()
        image = _serve(http_server, "/" + name, body, fmt, image_id="id-" + name)
        info = cache.ensure(image)
        expected_path = os.path.join(str(env.base_dir),
                                     hashlib.sha1(image["id"].encode()).hexdigest())
        assert info.path == expected_path == cache.base_path(image["id"])
        assert info.image_id == image["id"]
        assert info.disk_format == fmt
        assert info.virtual_size == vsize
        assert info.size == len(body)
        assert info.digest == hashlib.sha256(body).hexdigest()
        assert info.source == "download"
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", info.downloaded_at)
        with open(expected_path, "rb") as f:
            assert f.read() == body
        assert stat.S_IMODE(os.stat(expected_path).st_mode) == 0o644   # QEMU reads it
        # the sidecar (digest, source, pin) is the agent's own: 0600
        assert stat.S_IMODE(os.stat(expected_path + ".info").st_mode) == 0o600
        with open(expected_path + ".info") as f:
            side = json.load(f)
        assert side == {
            "version": 1, "image_id": image["id"], "disk_format": fmt,
            "virtual_size": vsize, "size": len(body), "digest_algo": "sha256",
            "digest": info.digest, "hash_algo": "sha256", "hash": info.digest,
            "downloaded_at": info.downloaded_at, "source": "download"}
        assert cache.info(image["id"]) == info
        assert cache.digest(image["id"]) == info.digest
    # only bases and sidecars: no temp files left
    names = base_entries(env)
    assert len(names) == 8
    assert all(re.match(r"^[0-9a-f]{40}(\.info)?$", n) for n in names)


def test_sha512_declared_digest_is_sha256(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    url = http_server.add("/r", body)
    image = image_for("img-512", url, body, "raw", hash_algo="sha512")
    info = cache.ensure(image)
    assert info.digest == hashlib.sha256(body).hexdigest()
    assert info.hash_algo == "sha512"
    assert info.hash == hashlib.sha512(body).hexdigest()
    # cached: the sha512 is verified from the sidecar, no download
    assert cache.ensure(image) == info
    assert http_server.count("/r") == 1


def test_cached_ensure_touches_and_does_not_download(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    image = _serve(http_server, "/r", body)
    info = cache.ensure(image)
    _age(info.path, 2 * DAY)
    again = cache.ensure(image)
    assert again == info
    assert time.time() - os.stat(info.path).st_mtime < 60
    assert http_server.count("/r") == 1


def test_cached_base_must_match_declared_image(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    image = _serve(http_server, "/r", body)
    info = cache.ensure(image)
    other = dict(image, hash=hashlib.sha256(b"x").hexdigest())
    with pytest.raises(exception.ImageUnacceptable,
                       match="cached base does not match the declared sha256 hash"):
        cache.ensure(other)
    with pytest.raises(exception.ImageUnacceptable,
                       match="cached base is raw but disk_format is qcow2"):
        cache.ensure(dict(image, disk_format="qcow2"))
    assert os.path.exists(info.path)  # never deleted: it may be in use


def test_missing_sidecar_is_rebuilt(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    image = _serve(http_server, "/r", body)
    info = cache.ensure(image)
    os.unlink(info.path + ".info")
    assert cache.info(image["id"]) is None
    again = cache.ensure(image)
    assert again.digest == info.digest and again.source == "rebuilt"
    assert http_server.count("/r") == 1
    assert cache.info(image["id"]) == again


def test_image_id_is_never_a_path(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    image = _serve(http_server, "/r", body, image_id="../../../etc/passwd")
    info = cache.ensure(image)
    assert os.path.dirname(info.path) == str(env.base_dir)
    assert os.path.basename(info.path) == hashlib.sha1(b"../../../etc/passwd").hexdigest()


@pytest.mark.parametrize("image", [None, {}, {"id": "", "url": "x", "disk_format": "raw",
                                              "size": 1, "hash_algo": "sha256",
                                              "hash": "0" * 64},
                                   {"id": "a", "url": "x", "disk_format": "raw",
                                    "size": "1", "hash_algo": "sha256", "hash": "0" * 64}])
def test_malformed_image_dict(cache, image):
    with pytest.raises(exception.InvalidInput):
        cache.ensure(image)


# -- ensure: the bad corpus ----------------------------------------------------------

def test_bad_corpus_rejected_nothing_left(env, cache, http_server, set_conf):
    cases = build_bad_corpus(env.work / "bad")
    reasons = {}
    for i, case in enumerate(cases):
        body = case["path"].read_bytes()
        image = _serve(http_server, "/bad%d" % i, body, case["disk_format"])
        with pytest.raises(exception.ImageUnacceptable) as ei:
            cache.ensure(image)
        reason = ei.value.kwargs["reason"]
        assert re.search(case["reason"], reason), (case["name"], reason)
        reasons[case["name"]] = reason
        assert base_entries(env) == [], case["name"]
        assert not os.path.exists(cache.base_path(image["id"]))

    # Download-level failures
    body = make_raw(env.work / "r", 65536)
    outside = env.outside / "img"
    outside.write_bytes(body)
    fetch_cases = [
        ("wrong hash", dict(_serve(http_server, "/h", body),
                            hash=hashlib.sha256(b"no").hexdigest()),
         r"^sha256 mismatch"),
        ("oversize body", _serve(http_server, "/long", body + b"x" * 70000,
                                 content_length=False) | {"size": len(body)},
         r"^body is longer than the declared size"),
        ("short body", _serve(http_server, "/short", body[:100],
                              content_length=False) | {"size": len(body)},
         r"^body is shorter than the declared size"),
        ("file outside", image_for("f", "file://%s" % outside, body, "raw"),
         r"is outside image_cache.allowed_file_dirs$"),
        ("scheme", image_for("s", "ftp://127.0.0.1/img", body, "raw"),
         r"^URL scheme 'ftp' is not allowed"),
        ("http 404", image_for("n", "http://127.0.0.1:%d/nope" % http_server.port,
                               body, "raw"), r"^HTTP 404 "),
    ]
    for name, image, pattern in fetch_cases:
        with pytest.raises(exception.ImageDownloadFailed) as ei:
            cache.ensure(image)
        reason = ei.value.kwargs["reason"]
        assert re.search(pattern, reason), (name, reason)
        reasons[name] = reason
        assert base_entries(env) == [], name
    assert len(reasons) == len(cases) + len(fetch_cases) >= 13
    assert len(set(reasons.values())) == len(reasons)


def test_good_file_url(env, cache):
    src = env.files / "img.raw"
    body = make_raw(src, 65536)
    info = cache.ensure(image_for("f", "file://%s" % src, body, "raw"))
    assert info.digest == hashlib.sha256(body).hexdigest()


# -- concurrency -----------------------------------------------------------------------

def test_eight_threads_one_download(env, cache, http_server):
    body = make_qcow2(env.work / "q", "4M")
    image = _serve(http_server, "/q", body, "qcow2", delay=0.3)
    results, errors = [], []
    barrier = threading.Barrier(8)

    def run():
        try:
            barrier.wait()
            # a separate ImageCache object per thread, like separate callers
            results.append(cache_mod.ImageCache().ensure(image))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(results) == 8
    assert http_server.count("/q") == 1
    assert len({r.digest for r in results}) == 1
    assert len(base_entries(env)) == 2


def _proc_ensure(image, barrier, queue):
    try:
        barrier.wait(10)
        info = cache_mod.ImageCache().ensure(image)
        queue.put(("ok", info.digest))
    except Exception as e:
        queue.put(("error", repr(e)))


def test_four_processes_one_download(env, http_server):
    body = make_raw(env.work / "r", 1024 * 1024)
    image = _serve(http_server, "/r", body, delay=0.3)
    ctx = multiprocessing.get_context("fork")  # inherits the CONF overrides
    barrier = ctx.Barrier(4)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_proc_ensure, args=(image, barrier, queue))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    assert results == [("ok", hashlib.sha256(body).hexdigest())] * 4
    assert http_server.count("/r") == 1
    assert len(base_entries(env)) == 2


# -- import_base -------------------------------------------------------------------

def test_import_base(env, cache, http_server):
    src = env.work / "peer.qcow2"
    body = make_qcow2(src, "4M")
    sha = hashlib.sha256(body).hexdigest()
    info = cache.import_base("img-imp", str(src), sha, "qcow2")
    assert info.source == "import" and info.digest == sha
    assert info.disk_format == "qcow2" and info.virtual_size == 4 * 1024 * 1024
    assert cache.digest("img-imp") == sha
    # again, from a file object: already cached with that digest
    with open(src, "rb") as f:
        assert cache.import_base("img-imp", f, sha, "qcow2").digest == sha
    # a different digest for a cached base is refused and the base kept
    with pytest.raises(exception.ImageUnacceptable, match="does not match"):
        cache.import_base("img-imp", str(src), "0" * 64, "qcow2")
    assert os.path.exists(info.path)
    # ensure() of the image now finds it (no download)
    image = _serve(http_server, "/imp", body, "qcow2", image_id="img-imp")
    assert cache.ensure(image).digest == sha
    assert http_server.count("/imp") == 0


def test_import_base_failures_leave_nothing(env, cache):
    src = env.work / "peer.raw"
    body = make_raw(src, 65536)
    with open(src, "rb") as f:
        with pytest.raises(exception.ImageDownloadFailed, match="sha256 mismatch"):
            cache.import_base("img-x", f, "0" * 64, "raw")
    assert base_entries(env) == []
    bad = build_bad_corpus(env.work / "bad")[0]  # qcow2 with a backing file
    sha = hashlib.sha256(bad["path"].read_bytes()).hexdigest()
    with pytest.raises(exception.ImageUnacceptable, match="backing file"):
        cache.import_base("img-y", str(bad["path"]), sha, "qcow2")
    assert base_entries(env) == []


# -- in use, list, clean -----------------------------------------------------------------

def _cached(cache, http_server, env, name, age=2 * DAY):
    body = make_raw(env.work / name, 65536, pattern=name.encode() + b"\n")
    info = cache.ensure(_serve(http_server, "/" + name, body, image_id="id-" + name))
    _age(info.path, age)
    return info


def _instance_disk(env, dirname, base):
    d = env.instances / dirname
    d.mkdir()
    disk = d / "disk"
    qemu_img.create_overlay(str(disk), base.path, base.disk_format, 1024 * 1024)
    return disk


def test_in_use_from_real_chains(env, cache, http_server):
    a = _cached(cache, http_server, env, "a")
    b = _cached(cache, http_server, env, "b")
    c = _cached(cache, http_server, env, "c")
    d = _cached(cache, http_server, env, "d")
    _instance_disk(env, UUID1, a)
    _instance_disk(env, UUID2 + "_resize", b)  # a resize source keeps its base
    _instance_disk(env, "not-a-uuid", c)  # ignored
    # a deeper chain: disk -> snapshot in the instance dir -> base d
    inst = env.instances / "33333333-3333-4333-8333-333333333333"
    inst.mkdir()
    qemu_img.create_overlay(str(inst / "snap"), d.path, "raw")
    qemu_img.create_overlay(str(inst / "disk"), str(inst / "snap"), "qcow2")
    # a raw instance disk has no backing file, and one with a missing backing file
    # still names it in its own header
    (env.instances / "44444444-4444-4444-8444-444444444444").mkdir()
    make_raw(env.instances / "44444444-4444-4444-8444-444444444444" / "disk", 65536)
    assert cache.in_use_bases() == {a.path, b.path, d.path}
    bases = {b["path"]: b for b in cache.list_bases()}
    assert set(bases) == {a.path, b.path, c.path, d.path}
    assert bases[a.path]["in_use"] and not bases[c.path]["in_use"]
    assert bases[c.path]["image_id"] == "id-c"
    assert bases[c.path]["size"] == 65536
    assert bases[c.path]["age"] >= 2 * DAY - 60


def test_clean(env, cache, http_server):
    used = _cached(cache, http_server, env, "used")
    old = _cached(cache, http_server, env, "old")
    young = _cached(cache, http_server, env, "young", age=60)
    _instance_disk(env, UUID1, used)

    # dry run: reports, removes nothing
    assert cache.clean(min_age_seconds=DAY, dry_run=True) == [old.path]
    assert all(os.path.exists(p) for p in (used.path, old.path, young.path))

    # the base used by the overlay's real chain is kept although nothing but the
    # disk itself says so; the old unused one goes with its sidecar; young stays
    assert cache.clean(min_age_seconds=DAY) == [old.path]
    assert not os.path.exists(old.path)
    assert not os.path.exists(old.path + ".info")
    assert os.path.exists(used.path) and os.path.exists(young.path)
    assert cache.info("id-old") is None

    # the default minimum age comes from CONF (24 h): young still kept
    assert cache.clean() == []
    assert cache.clean(min_age_seconds=0) == [young.path]


def test_clean_in_batches(env, cache, http_server, monkeypatch):
    monkeypatch.setattr(cache_mod, "CLEAN_BATCH", 2)
    olds = [_cached(cache, http_server, env, "o%d" % i) for i in range(5)]
    used = _cached(cache, http_server, env, "used")
    _instance_disk(env, UUID1, used)
    assert sorted(cache.clean(min_age_seconds=DAY)) == sorted(b.path for b in olds)
    assert [b["path"] for b in cache.list_bases()] == [used.path]


def test_clean_defaults_from_conf(env, cache, http_server, set_conf):
    b = _cached(cache, http_server, env, "b", age=120)
    assert cache.clean() == []
    set_conf("remove_unused_original_minimum_age_seconds", 60, group="image_cache")
    assert cache.clean() == [b.path]


def test_clean_skips_busy_base(env, cache, http_server):
    b = _cached(cache, http_server, env, "b")
    held, release = threading.Event(), threading.Event()

    def hold():
        with cache.lock("id-b"):  # e.g. a spawn creating its overlay
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        assert cache.clean(min_age_seconds=0) == []
    finally:
        release.set()
        t.join()
    assert os.path.exists(b.path)
    assert cache.clean(min_age_seconds=0) == [b.path]


def test_using_holds_the_lock_over_overlay_creation(env, cache, http_server):
    body = make_raw(env.work / "r", 65536)
    image = _serve(http_server, "/r", body)
    with cache.using(image) as base:
        _age(base.path, 2 * DAY)  # as old as it gets: only the lock protects it
        assert cache.clean(min_age_seconds=0) == []
        _instance_disk(env, UUID1, base)
    assert cache.clean(min_age_seconds=0) == []  # now the chain protects it
    assert os.path.exists(base.path)


def test_unreadable_chain_removes_nothing(env, cache, http_server):
    b = _cached(cache, http_server, env, "b")
    bad = env.instances / UUID1
    bad.mkdir()
    (bad / "disk").write_bytes(b"QFI\xfb" + b"\xff" * 4092)  # qcow2 magic, garbage
    assert cache.clean(min_age_seconds=0) == []
    assert os.path.exists(b.path)
    os.unlink(bad / "disk")
    assert cache.clean(min_age_seconds=0) == [b.path]


def test_missing_backing_file_still_counts(env, cache, http_server):
    b = _cached(cache, http_server, env, "b")
    gone = _cached(cache, http_server, env, "gone")
    _instance_disk(env, UUID1, gone)
    os.unlink(gone.path)  # someone removed it by hand: the chain is broken
    assert cache.in_use_bases() == {gone.path}
    assert cache.clean(min_age_seconds=0) == [b.path]


def test_clean_removes_leftovers(env, cache, http_server):
    keep = _cached(cache, http_server, env, "keep", age=0)
    name = os.path.basename(keep.path)
    part = env.base_dir / (".%s.part-abc123" % name)
    part.write_bytes(b"half a download")
    orphan = env.base_dir / ("%s.info" % ("f" * 40))
    orphan.write_text("{}")
    other = env.base_dir / "README"  # not ours: never touched
    other.write_text("x")
    assert cache.clean(min_age_seconds=DAY, dry_run=True) == []
    assert part.exists() and orphan.exists()
    assert cache.clean(min_age_seconds=DAY) == []
    assert not part.exists() and not orphan.exists()
    assert other.exists() and os.path.exists(keep.path)
    assert os.path.exists(keep.path + ".info")


def test_clean_without_base_dir(env, cache):
    assert cache.clean(min_age_seconds=0) == []
    assert cache.list_bases() == []
    assert cache.in_use_bases() == set()


@pytest.mark.parametrize("what", ["overlay", "touch"])
def test_clean_rechecks_under_the_lock(env, cache, http_server, monkeypatch, what):
    """LP#1256838: between the cleaner's first look and its taking the lock, a
    spawn starts using the base (creates an overlay on it, or ensure() touches it).
    The cleaner must re-check under the lock and keep the base."""
    b = _cached(cache, http_server, env, "b")
    real_lock = cache._lock
    calls = []

    def lock(name, blocking=True):
        if not calls:  # the spawn wins the race to the lock
            with real_lock(name):
                if what == "overlay":
                    _instance_disk(env, UUID1, b)
                else:
                    os.utime(b.path)
        calls.append(name)
        return real_lock(name, blocking=blocking)

    monkeypatch.setattr(cache, "_lock", lock)
    assert cache.clean(min_age_seconds=DAY) == []
    assert calls == [os.path.basename(b.path)]
    assert os.path.exists(b.path)
