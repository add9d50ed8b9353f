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
