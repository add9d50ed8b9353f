"""[image_cache] allowed_url_hosts: image URLs and their redirects stay within the
allow-list; faults never echo the foreign server's text (issue 9)."""
import hashlib
import tempfile

import pytest

from computeagent import exception
from computeagent.images import fetch

BODY = b"allowed-hosts" * 1000


def _fetch(url):
    with tempfile.TemporaryFile() as dest:
        return fetch.fetch(url, dest, image_id="img-1", size=len(BODY),
                           hash_algo="sha256",
                           expected_hash=hashlib.sha256(BODY).hexdigest())


@pytest.mark.parametrize("host,allowed,ok", [
    ("glance.example.org", ["glance.example.org"], True),
    ("GLANCE.example.org.", ["glance.example.org"], True),
    ("evil.example.org", ["glance.example.org"], False),
    ("10.20.1.5", ["10.20.0.0/16"], True),
    ("10.21.1.5", ["10.20.0.0/16"], False),
    ("127.0.0.1", ["127.0.0.0/8"], True),
    ("localhost", ["127.0.0.0/8"], True),       # resolves inside
    ("anything", [], True),                       # empty: no restriction
    ("", ["10.0.0.0/8"], False),
])
def test_host_allowed(host, allowed, ok):
    assert fetch.host_allowed(host, allowed) is ok


def test_url_outside_the_list_refused_before_connecting(env, http_server, set_conf):
    url = http_server.add("/img", BODY)
    set_conf("allowed_url_hosts", ["10.99.0.0/16"], "image_cache")
    with pytest.raises(exception.ImageDownloadFailed,
                       match="not in image_cache.allowed_url_hosts"):
        _fetch(url)
    assert http_server.count("/img") == 0
    with pytest.raises(exception.ImageDownloadFailed, match="allowed_url_hosts"):
        fetch.check_source("img-1", url)


def test_redirect_only_within_the_list(env, http_server, set_conf):
    url = http_server.add("/img", BODY)
    inside = http_server.add("/in", b"", status=302, location=url)
    outside = http_server.add("/out", b"", status=302,
                              location=url.replace("127.0.0.1", "127.0.0.2"))
    set_conf("allowed_url_hosts", ["127.0.0.1"], "image_cache")
    assert _fetch(inside).size == len(BODY)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(outside)
    assert "redirect refused" in ei.value.kwargs["reason"]
    assert "'127.0.0.2'" in ei.value.kwargs["reason"]


def test_fault_does_not_echo_the_servers_text(env, http_server):
    url = "http://127.0.0.1:%d/missing" % http_server.port
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url)
    assert ei.value.kwargs["reason"] == "HTTP 404 from %s" % url
