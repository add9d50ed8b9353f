"""Image pre-caching (RPC 1.5) on the fake agent: the records, the edge, pins."""
import hashlib
import os

import pytest

from computeagent import exception
from tests.unit.test_agent_fake import agent_env, wait  # noqa: F401  (fixture)


def _rows(client, host="fakehost"):
    return {r["image_id"]: r for r in client.get_image_cache({}, host)}


def test_cache_images_records_cached_and_pins(agent_env):  # noqa: F811
    svc, client, image, _tmp = agent_env
    # several requests at once: one record, one base
    for _ in range(5):
        client.cache_images({"request_id": "req-p"}, "fakehost", [image],
                            pin_until="2999-01-01T00:00:00Z")
    row = wait(lambda: (_rows(client).get(image["id"]) or {}).get("state") == "cached"
               and _rows(client)[image["id"]])
    assert row["digest"] == image["hash"]
    assert row["bytes_done"] == row["bytes_total"] == image["size"]
    assert row["source"] == "image-server"
    assert row["pinned_until"] == "2999-01-01T00:00:00Z"
    assert row["failure_reason"] is None and row["last_used"]
    base = svc.manager.image_cache.base_path(image["id"])
    assert os.path.isfile(base)
    # pinned: an image-cache clean with age 0 keeps it
    assert svc.manager.image_cache.clean(min_age_seconds=0) == []
    assert os.path.isfile(base)
    svc.manager.image_cache.pin(image["id"], 0)
    assert svc.manager.image_cache.clean(min_age_seconds=0) == [base]
    assert image["id"] not in _rows(client)   # the stale record is dropped


def test_cache_images_tampered_fails_with_reason(agent_env):  # noqa: F811
    svc, client, image, tmp = agent_env
    bad = dict(image, id="img-bad", hash=hashlib.sha256(b"other").hexdigest())
    client.cache_images({}, "fakehost", [bad])
    row = wait(lambda: (_rows(client).get("img-bad") or {}).get("state") == "failed"
               and _rows(client)["img-bad"])
    assert "sha256 mismatch" in row["failure_reason"]
    assert not os.path.exists(svc.manager.image_cache.base_path("img-bad"))
    assert not [n for n in os.listdir(svc.manager.image_cache.base_dir)
                if n.startswith(".")]


@pytest.mark.parametrize("images,pin,needle", [
    ([], None, "images must be a list"),
    ("x", None, "images must be a list"),
    ([{"id": "a"}], None, "images/0"),
    (None, "tomorrow", "images must be a list"),
])
def test_validate_cache_images_refuses(images, pin, needle):
    from computeagent.rpc import schema
    with pytest.raises(exception.InvalidInput) as ei:
        schema.validate_cache_images(images, pin)
    assert needle in str(ei.value)


def test_validate_cache_images_pin_and_duplicates():
    from computeagent.rpc import schema
    img = {"id": "a", "url": "http://x/a", "disk_format": "raw", "size": 1,
           "hash_algo": "sha256", "hash": "A" * 64}
    out, pin = schema.validate_cache_images([img], "2030-01-02T03:04:05Z")
    assert out[0]["hash"] == "a" * 64 and pin.year == 2030 and pin.second == 5
    with pytest.raises(exception.InvalidInput, match="pin_until"):
        schema.validate_cache_images([img], "2030-01-02 03:04:05")
    with pytest.raises(exception.InvalidInput, match="duplicate"):
        schema.validate_cache_images([img, img])


class _DirectConnection:
    """computeagent-ctl's connection, short-circuited to the in-process agent."""

    def __init__(self, client):
        self.api = client

    def rpc(self, host, fn, *args, **kw):
        return fn(*args, **kw)


def _ctl(client, argv):
    import io
    from computeagent.cmd import ctl
    app = ctl.CtlApp()
    app._connection = _DirectConnection(client)
    out, err = io.StringIO(), io.StringIO()
    app.stdout, app.stderr = out, err
    rc = app.run(argv)
    return rc, out.getvalue(), err.getvalue()


def test_ctl_image_cache_precache_wait_and_list(agent_env, tmp_path):  # noqa: F811
    import json
    _svc, client, image, _tmp = agent_env
    spec = tmp_path / "img.json"
    spec.write_text(json.dumps(image))
    rc, out, err = _ctl(client, ["image-cache", "precache", "--host", "fakehost",
                                 "--image-json", str(spec), "--wait",
                                 "--pin-until", "2999-01-01T00:00:00Z", "-f", "json"])
    assert rc == 0, err
    rows = json.loads(out)
    assert rows[0]["state"] == "cached" and "100%" in err
    rc, out, err = _ctl(client, ["image-cache", "list", "--host", "fakehost",
                                 "-f", "json"])
    assert rc == 0, err
    listed = {r["image_id"]: r for r in json.loads(out)}
    assert listed[image["id"]]["pinned_until"] == "2999-01-01T00:00:00Z"
    # a failure is reported with its reason and exit code 1
    bad = dict(image, id="img-bad2", size=image["size"] + 1)
    spec.write_text(json.dumps(bad))
    rc, out, err = _ctl(client, ["image-cache", "precache", "--host", "fakehost",
                                 "--image-json", str(spec), "--wait"])
    assert rc == 1
    assert "failed" in out and "declared size" in out
