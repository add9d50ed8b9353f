"""A base pulled from a peer is capped in bytes and time (issue 9): a fake libvirt
connection whose stream never ends."""
import io
import time

import pytest

from computeagent.virt import storage


class _Stream:
    def __init__(self, chunks, delay=0.0):
        self.chunks, self.delay, self.aborted = chunks, delay, False

    def recvAll(self, handler, opaque):
        for c in self.chunks:
            time.sleep(self.delay)
            handler(self, c, opaque)

    def finish(self):
        pass

    def abort(self):
        self.aborted = True


class _Conn:
    def __init__(self, stream):
        self.stream = stream

    def storagePoolLookupByName(self, name):

        class Pool:
            def isActive(self):
                return True

            def refresh(self, flags):
                pass

            def storageVolLookupByName(self, n):
                class Vol:
                    def download(self, *a):
                        pass
                return Vol()
        return Pool()

    def newStream(self, flags):
        return self.stream

    def close(self):
        pass


def _patch(monkeypatch, stream):
    monkeypatch.setattr(storage.libvirt, "open", lambda uri: _Conn(stream))


def test_within_the_cap(monkeypatch):
    s = _Stream([b"x" * 100] * 10)
    _patch(monkeypatch, s)
    out = io.BytesIO()
    assert storage.download("qemu+tls://p/system", "/b", "n", out, max_bytes=1000) == 1000
    assert not s.aborted


def test_more_than_the_cap_aborts(monkeypatch):
    s = _Stream([b"x" * 100] * 1000)
    _patch(monkeypatch, s)
    out = io.BytesIO()
    with pytest.raises(storage.TransferLimit, match="more than 1000 bytes"):
        storage.download("qemu+tls://p/system", "/b", "n", out, max_bytes=1000)
    assert s.aborted and len(out.getvalue()) <= 1000


def test_past_the_deadline_aborts(monkeypatch):
    s = _Stream([b"x"] * 1000, delay=0.01)
    _patch(monkeypatch, s)
    with pytest.raises(storage.TransferLimit, match="deadline"):
        storage.download("qemu+tls://p/system", "/b", "n", io.BytesIO(),
                         deadline=time.monotonic() + 0.1)
    assert s.aborted
