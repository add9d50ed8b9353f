"""computeagent.images.fetch over real HTTP (127.0.0.1) and real files."""
import hashlib
import io
import os
import tempfile

import pytest

from computeagent import exception
from computeagent.images import fetch


BODY = b"0123456789abcdef" * 4096  # 64 KiB


def _fetch(url, body=BODY, size=None, algo="sha256", digest=None):
    """fetch() into a real temp file (it fsyncs); returns (result, bytes written)."""
    with tempfile.TemporaryFile() as dest:
        result = fetch.fetch(url, dest, image_id="img-1",
                             size=len(body) if size is None else size, hash_algo=algo,
                             expected_hash=digest or hashlib.new(algo, body).hexdigest())
        dest.seek(0)
        return result, dest.read()


def _reason(ei):
    assert ei.value.kwargs["image_id"] == "img-1"
    return ei.value.kwargs["reason"]


def test_http_ok_sha256_and_sha512(env, http_server):
    url = http_server.add("/img", BODY)
    result, data = _fetch(url)
    assert data == BODY
    assert result.size == len(BODY)
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()
    result, data = _fetch(url, algo="sha512")
    assert result.hash_algo == "sha512"
    assert result.hash == hashlib.sha512(BODY).hexdigest()
    # the sha256 digest is always computed too
    assert result.sha256 == hashlib.sha256(BODY).hexdigest()
    assert http_server.count("/img") == 2


def test_http_without_content_length(env, http_server):
    url = http_server.add("/img", BODY, content_length=False)
    _result, data = _fetch(url)
    assert data == BODY


def test_hash_mismatch(env, http_server):
    url = http_server.add("/img", BODY)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, digest=hashlib.sha256(b"other").hexdigest())
    assert _reason(ei).startswith("sha256 mismatch: got %s" % hashlib.sha256(BODY).hexdigest())


def test_long_body_stops_streaming(env, http_server):
    url = http_server.add("/img", BODY + b"x" * (4 * 1024 * 1024), content_length=False)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, size=len(BODY))
    assert _reason(ei) == "body is longer than the declared size (%d bytes)" % len(BODY)


def test_long_body_announced(env, http_server):
    url = http_server.add("/img", BODY + b"x")
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, size=len(BODY))
    assert _reason(ei).startswith("body is longer than the declared size "
                                  "(server announces")


def test_short_body(env, http_server):
    url = http_server.add("/img", BODY[:1000], content_length=False)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, size=len(BODY))
    assert _reason(ei) == ("body is shorter than the declared size (1000 of %d bytes)"
                           % len(BODY))


def test_short_body_lying_content_length(env, http_server):
    # The server announces the right length and then closes early.
    url = http_server.add("/img", BODY[:1000], content_length=len(BODY))
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, size=len(BODY))
    assert "shorter than the declared size" in _reason(ei)


def test_declared_size_above_max_image_size(env, http_server, set_conf):
    set_conf("max_image_size_gb", 1, group="image_cache")
    url = http_server.add("/img", BODY)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url, size=1024 ** 3 + 1)
    assert "exceeds image_cache.max_image_size_gb" in _reason(ei)
    assert http_server.count("/img") == 0


def test_http_errors(env, http_server):
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch("http://127.0.0.1:%d/missing" % http_server.port)
    assert _reason(ei).startswith("HTTP 404 ")
    url = http_server.add("/boom", b"", status=500)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url)
    assert _reason(ei).startswith("HTTP 500 ")
    url = http_server.add("/partial", BODY, status=206)
    with pytest.raises(exception.ImageDownloadFailed, match="expected 200"):
        _fetch(url)


def test_connection_refused(env, http_server):
    port = http_server.port
    http_server.close()
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch("http://127.0.0.1:%d/img" % port)
    assert _reason(ei).startswith("cannot connect to http://127.0.0.1:%d/img" % port)


def test_read_timeout(env, http_server, set_conf):
    set_conf("download_timeout", 1, group="image_cache")
    url = http_server.add("/slow", BODY, delay=2.5)
    with pytest.raises(exception.ImageDownloadFailed, match="timed out"):
        _fetch(url)


def test_redirects_only_to_http(env, http_server):
    url = http_server.add("/img", BODY)
    moved = http_server.add("/moved", b"", status=302, location=url)
    _result, data = _fetch(moved)
    assert data == BODY
    src = env.files / "img"
    src.write_bytes(BODY)
    evil = http_server.add("/evil", b"", status=302, location="file://%s" % src)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(evil)
    assert _reason(ei) == "redirect to a 'file' URL refused"
    ftp = http_server.add("/ftp", b"", status=302, location="ftp://127.0.0.1/x")
    with pytest.raises(exception.ImageDownloadFailed, match="'ftp' URL refused"):
        _fetch(ftp)


def test_credentials_not_in_messages(env, http_server):
    url = "http://user:secret@127.0.0.1:%d/missing?token=secret2" % http_server.port
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url)
    assert "secret" not in str(ei.value)


def test_file_url_inside_allowed_dir(env):
    src = env.files / "sub" / "img"
    src.parent.mkdir()
    src.write_bytes(BODY)
    _result, data = _fetch("file://%s" % src)
    assert data == BODY
    _result, data = _fetch("file://localhost%s" % src)
    assert data == BODY


def test_file_url_outside_allowed_dirs(env):
    src = env.outside / "img"
    src.write_bytes(BODY)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch("file://%s" % src)
    assert _reason(ei) == "file %s is outside image_cache.allowed_file_dirs" % src
    # .. and symlinks are resolved before the check
    for url in ("file://%s/../outside/img" % env.files,
                "file://%s" % _symlink(env.files / "link", src),
                "file://%s" % _symlink(env.files / "dirlink", env.outside) + "/img"):
        with pytest.raises(exception.ImageDownloadFailed,
                           match="outside image_cache.allowed_file_dirs"):
            _fetch(url)
    # the allowed dir itself is not a file
    with pytest.raises(exception.ImageDownloadFailed, match="outside"):
        _fetch("file://%s" % env.files)


def _symlink(link, target):
    os.symlink(target, link)
    return link


def test_file_urls_refused_when_no_dir_allowed(env, set_conf):
    set_conf("allowed_file_dirs", [], group="image_cache")
    src = env.files / "img"
    src.write_bytes(BODY)
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch("file://%s" % src)
    assert _reason(ei) == ("file:// image URLs are refused "
                           "(image_cache.allowed_file_dirs is empty)")


def test_file_url_special_cases(env):
    with pytest.raises(exception.ImageDownloadFailed, match="with a host"):
        _fetch("file://otherhost/etc/passwd")
    os.mkfifo(env.files / "fifo")
    with pytest.raises(exception.ImageDownloadFailed, match="not a regular file"):
        _fetch("file://%s" % (env.files / "fifo"))
    src = env.files / "img"
    src.write_bytes(BODY + b"x")
    with pytest.raises(exception.ImageDownloadFailed,
                       match="longer than the declared size \\(file has"):
        _fetch("file://%s" % src)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/img", "data:,hello", "/etc/passwd",
                                 "gopher://x/", "FILEX:///etc/passwd", ""])
def test_unsupported_schemes(env, url):
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        _fetch(url)
    assert "is not allowed (http, https, file)" in _reason(ei)


@pytest.mark.parametrize("algo,digest", [("md5", "0" * 32), ("sha256", "0" * 63),
                                         ("sha256", "z" * 64), ("sha512", "0" * 64)])
def test_declared_hash_validated(env, http_server, algo, digest):
    url = http_server.add("/img", BODY)
    with pytest.raises(exception.ImageDownloadFailed):
        fetch.fetch(url, io.BytesIO(), image_id="img-1", size=len(BODY),
                    hash_algo=algo, expected_hash=digest)
    assert http_server.count("/img") == 0


def _mixed_body():
    """Several pipeline buffers: data, a whole zero buffer (a hole), a tail."""
    c = fetch.CHUNK_SIZE
    return os.urandom(c) + bytes(c) + b"\x00" * 100 + os.urandom(c // 3)


def test_pipeline_content_holes_and_progress(env):
    body = _mixed_body()
    seen = []
    with tempfile.NamedTemporaryFile() as dest:
        result = fetch.copy_stream(io.BytesIO(body), dest, image_id="img-1",
                                   size=len(body), hash_algo="sha512",
                                   expected_hash=hashlib.sha512(body).hexdigest(),
                                   progress=seen.append)
        dest.seek(0)
        assert dest.read() == body
        st = os.stat(dest.name)
        # the all-zero buffer became a hole
        assert st.st_blocks * 512 < len(body) - fetch.CHUNK_SIZE // 2
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert seen[-1] == len(body) and seen == sorted(seen)


def test_pipeline_starts_writeback_as_it_goes_and_keeps_the_content(env, monkeypatch):
    """Write-back is started every WRITEBACK_EVERY bytes (here every buffer): the
    file still holds exactly the body, holes included; a range sync_file_range
    cannot take (a pipe) is ignored, as the advice it is."""
    monkeypatch.setattr(fetch, "WRITEBACK_EVERY", fetch.CHUNK_SIZE)
    kicks = []
    real = fetch.start_writeback
    monkeypatch.setattr(fetch, "start_writeback",
                        lambda fd, off, n: (kicks.append((off, n)), real(fd, off, n)))
    body = _mixed_body() * 2
    with tempfile.NamedTemporaryFile() as dest:
        result = fetch.copy_stream(io.BytesIO(body), dest, image_id="img-1",
                                   size=len(body), hash_algo="sha256",
                                   expected_hash=hashlib.sha256(body).hexdigest())
        dest.seek(0)
        assert dest.read() == body
    assert result.size == len(body)
    # consecutive ranges from 0, each at least one buffer long
    assert kicks and kicks[0][0] == 0
    assert all(a[0] + a[1] == b[0] for a, b in zip(kicks, kicks[1:]))
    r, w = os.pipe()
    try:
        fetch.start_writeback(w, 0, 4096)
    finally:
        os.close(r)
        os.close(w)


def test_pipeline_write_error_is_reported(env):
    body = _mixed_body()

    class Full(io.BytesIO):
        def write(self, data):
            raise OSError(28, "No space left on device")
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        fetch.copy_stream(io.BytesIO(body), Full(), image_id="img-1", size=len(body),
                          hash_algo="sha256",
                          expected_hash=hashlib.sha256(body).hexdigest())
    assert "writing the image failed" in _reason(ei)
    assert "No space left" in _reason(ei)


def test_pipeline_read_error_is_reported(env):
    class Broken(io.RawIOBase):
        def __init__(self):
            self.n = 0

        def readinto(self, b):
            self.n += 1
            if self.n > 2:
                raise ConnectionResetError(104, "Connection reset by peer")
            b[:10] = b"x" * 10
            return 10
    with pytest.raises(exception.ImageDownloadFailed) as ei:
        fetch.copy_stream(Broken(), io.BytesIO(), image_id="img-1", size=1000,
                          hash_algo="sha256", expected_hash="0" * 64)
    assert "reading the image failed after 20 bytes" in _reason(ei)


def test_verifying_writer(env):
    body = _mixed_body()
    with tempfile.TemporaryFile() as dest:
        w = fetch.VerifyingWriter(dest, image_id="img-1", size=len(body),
                                  hash_algo="sha256",
                                  expected_hash=hashlib.sha256(body).hexdigest())
        for i in range(0, len(body), 256 * 1024):   # a libvirt stream's chunks
            w.write(body[i:i + 256 * 1024])
        assert w.finish().size == len(body)
        dest.seek(0)
        assert dest.read() == body
    with tempfile.TemporaryFile() as dest:
        w = fetch.VerifyingWriter(dest, image_id="img-1", size=10, hash_algo="sha256",
                                  expected_hash=hashlib.sha256(b"x" * 10).hexdigest())
        with pytest.raises(exception.ImageDownloadFailed, match="longer"):
            w.write(b"x" * 11)
    with tempfile.TemporaryFile() as dest:
        w = fetch.VerifyingWriter(dest, image_id="img-1", size=10, hash_algo="sha256",
                                  expected_hash=hashlib.sha256(b"x" * 10).hexdigest())
        w.write(b"y" * 10)
        with pytest.raises(exception.ImageDownloadFailed, match="sha256 mismatch"):
            w.finish()
