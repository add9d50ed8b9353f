"""Helpers of the images tests (imported by conftest and the test modules)."""
import hashlib
import http.server
import os
import subprocess
import threading
import time


def base_entries(env):
    """Everything in _base (hidden temp files included)."""
    return sorted(os.listdir(env.base_dir)) if env.base_dir.exists() else []


class Route:
    def __init__(self, body, status=200, content_length=True, delay=0.0,
                 location=None):
        self.body = body
        self.status = status
        # True: the real length; False: none (body ends at close); int: that value
        self.content_length = content_length
        self.delay = delay
        self.location = location


class ImageServer:
    """A real threaded HTTP server on 127.0.0.1 counting GETs per path."""

    def __init__(self):
        self.routes = {}
        self.gets = {}
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with server._lock:
                    server.gets[self.path] = server.gets.get(self.path, 0) + 1
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                    return
                if route.delay:
                    time.sleep(route.delay)
                self.send_response(route.status)
                if route.location:
                    self.send_header("Location", route.location)
                if route.content_length is True:
                    self.send_header("Content-Length", str(len(route.body)))
                elif route.content_length is not False:
                    self.send_header("Content-Length", str(route.content_length))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def add(self, path, body, **kw):
        self.routes[path] = Route(body, **kw)
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def count(self, path):
        with self._lock:
            return self.gets.get(path, 0)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def qemu_img(*args):
    """Run qemu-img directly to craft test images (not the code under test)."""
    subprocess.run(("qemu-img",) + args, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def image_for(image_id, url, body, disk_format, hash_algo="sha256", size=None):
    return {
        "id": image_id,
        "url": url,
        "disk_format": disk_format,
        "size": len(body) if size is None else size,
        "hash_algo": hash_algo,
        "hash": hashlib.new(hash_algo, body).hexdigest(),
    }


def make_raw(path, size=1024 * 1024, pattern=b"raw-image-data\n"):
    data = (pattern * (size // len(pattern) + 1))[:size]
    path.write_bytes(data)
    return data


def make_qcow2(path, virtual="4M", write=True):
    qemu_img("create", "-f", "qcow2", str(path), virtual)
    if write:
        # Put some data in, so tables and data clusters exist.
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    return path.read_bytes()


def _set_bits(path, offset, mask):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] | mask]))


def _mbr(partitions, boot_flag=0x00):
    """A 1 MiB raw disk whose first sector is an MBR with ``partitions``
    (list of (type, start_lba, sectors))."""
    disk = bytearray(1024 * 1024)
    for i, (ptype, start, count) in enumerate(partitions):
        off = 446 + 16 * i
        disk[off] = boot_flag
        disk[off + 4] = ptype
        disk[off + 8:off + 12] = start.to_bytes(4, "little")
        disk[off + 12:off + 16] = count.to_bytes(4, "little")
    disk[510:512] = b"\x55\xaa"
    return bytes(disk)


def build_bad_corpus(d):
    """Crafted images the inspection must reject, each with its own reason.

    Returns a list of dicts: name, path, disk_format (declared), reason (a regex
    the rejection reason must match). Files are created in ``d``.
    """
    d.mkdir(parents=True, exist_ok=True)
    cases = []

    def add(name, fmt, reason):
        cases.append({"name": name, "path": d / name, "disk_format": fmt,
                      "reason": reason})
        return d / name

    base = d / "some-host-file.raw"
    make_raw(base, 65536)

    p = add("backing.qcow2", "qcow2", r"^qcow2 image has a backing file \(")
    qemu_img("create", "-f", "qcow2", "-b", str(base), "-F", "raw", str(p), "1M")

    p = add("json-backing.qcow2", "qcow2",
            r"^qcow2 image has a json: backing file specification$")
    qemu_img("create", "-f", "qcow2", "-u", "-b",
             'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/passwd"}}',
             "-F", "raw", str(p), "1M")

    p = add("data-file.qcow2", "qcow2", r"^qcow2 image has an external data file$")
    qemu_img("create", "-f", "qcow2", "-o", "data_file=%s" % (d / "data.bin"),
             str(p), "1M")
    os.unlink(d / "data.bin")

    p = add("flat.vmdk", "raw", r"^content is vmdk, which is not allowed")
    p.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\n'
                 'parentCID=ffffffff\ncreateType="monolithicFlat"\n'
                 'RW 2048 FLAT "/etc/passwd" 0\n')

    p = add("qcow2-declared-raw", "raw", r"^content is qcow2 but disk_format is raw$")
    make_qcow2(p, "1M", write=False)

    p = add("raw-declared-qcow2", "qcow2", r"^content is raw but disk_format is qcow2$")
    make_raw(p, 65536)

    p = add("huge.qcow2", "qcow2",
            r"^virtual size 3298534883328 bytes exceeds image_cache.max_virtual_size_gb")
    qemu_img("create", "-f", "qcow2", str(p), "3T")

    p = add("truncated.qcow2", "qcow2", r"^qcow2 image is corrupt or truncated")
    make_qcow2(p, "4M")
    os.truncate(p, 1024 * 1024)

    p = add("truncated-header.qcow2", "qcow2",
            r"^truncated qcow2: the header is incomplete")
    make_qcow2(p, "4M", write=False)
    os.truncate(p, 60)

    p = add("unknown-feature.qcow2", "qcow2",
            r"^qcow2 image has an unsupported version or unknown incompatible features$")
    make_qcow2(p, "1M", write=False)
    _set_bits(p, 0x48 + 7, 0x20)  # incompatible feature bit 5: unknown

    p = add("encrypted.qcow2", "qcow2", r"^qcow2 image is encrypted$")
    # qemu-img would spend ~2 s benchmarking PBKDF2: set crypt_method (header
    # offset 32) to 1 (AES) by hand instead.
    make_qcow2(p, "1M", write=False)
    _set_bits(p, 35, 0x01)

    p = add("image.qed", "raw", r"^content is qed, which is not allowed")
    qemu_img("create", "-f", "qed", str(p), "1M")

    p = add("image.vhd", "raw", r"^content is vhd, which is not allowed")
    qemu_img("create", "-f", "vpc", str(p), "1M")

    p = add("image.luks", "raw", r"^content is luks, which is not allowed")
    # A LUKSv1 header (magic, version 1, cipher names), crafted for speed.
    luks = bytearray(1024 * 1024)
    luks[0:8] = b"LUKS\xba\xbe\x00\x01"
    luks[8:8 + 3] = b"aes"
    luks[40:40 + 9] = b"xts-plain"
    luks[72:72 + 6] = b"sha256"
    p.write_bytes(bytes(luks))

    p = add("image.iso", "raw", r"^content is iso, which is not allowed")
    iso = bytearray(64 * 1024)
    iso[0x8000:0x8006] = b"\x01CD001"
    p.write_bytes(bytes(iso))

    p = add("bad-mbr.raw", "raw", r"^partition table is invalid: .*boot flag")
    p.write_bytes(_mbr([(0x83, 2048, 1024)], boot_flag=0x42))

    os.unlink(base)
    return cases


def build_good_corpus(d):
    """Images that must be accepted: (name, path, disk_format, virtual_size)."""
    d.mkdir(parents=True, exist_ok=True)
    out = []
    p = d / "good.raw"
    make_raw(p, 1024 * 1024)
    out.append(("good.raw", p, "raw", 1024 * 1024))
    p = d / "good.qcow2"
    make_qcow2(p, "4M")
    out.append(("good.qcow2", p, "qcow2", 4 * 1024 * 1024))
    p = d / "partitioned.raw"
    p.write_bytes(_mbr([(0x83, 2048, 1024)]))
    out.append(("partitioned.raw", p, "raw", 1024 * 1024))
    p = d / "odd-size.raw"
    make_raw(p, 1000)
    out.append(("odd-size.raw", p, "raw", 1024))  # qemu rounds up to 512
    return out
