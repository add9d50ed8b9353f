"""The lab's image HTTP server: a threaded static file server that counts requests.

    python -m computeagent.lab.imageserver --dir D [--bind 192.0.2.1] [--port 8090]
                                           [--stats-file F]

- ``GET``/``HEAD /<name>`` serve the regular file ``D/<name>`` (sub-directories allowed,
  no escaping ``D``), with Content-Length and a single-range ``Range: bytes=a-b`` support.
- Every GET and HEAD is counted per path (the URL path without query, e.g.
  ``/base.raw``), also for missing files.
- ``GET /_stats`` returns ``{"get": {path: n}, "head": {path: n}}``;
  ``POST /_stats/reset`` zeroes the counts.  With ``--stats-file`` the same JSON is also
  written there (atomically) after every change.
- Fault injection for tests: ``POST /_faults`` with a JSON body
  ``{"/<name>": {"status": 503, "delay": 0.5, "truncate": 1048576, "rate": 1048576}}``
  (every key optional: reply with an error status, sleep before replying, close the
  connection after that many body bytes, limit the rate in bytes/s), ``GET /_faults``
  shows them, ``DELETE /_faults`` (or ``POST /_faults/reset``) clears them.
"""
import argparse
import collections
import json
import os
import posixpath
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 256 * 1024


class Stats:
    def __init__(self, stats_file=None):
        self._lock = threading.Lock()
        self._get = collections.Counter()
        self._head = collections.Counter()
        self._file = stats_file
        self._write()

    def count(self, method, path):
        with self._lock:
            (self._get if method == "GET" else self._head)[path] += 1
            self._write()

    def reset(self):
        with self._lock:
            self._get.clear()
            self._head.clear()
            self._write()

    def snapshot(self):
        with self._lock:
            return {"get": dict(self._get), "head": dict(self._head)}

    def _write(self):
        if not self._file:
            return
        tmp = f"{self._file}.tmp.{threading.get_ident()}"
        with open(tmp, "w") as f:
            json.dump({"get": dict(self._get), "head": dict(self._head)}, f)
        os.replace(tmp, self._file)


class Faults:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults = {}

    def set(self, faults):
        with self._lock:
            for path, spec in faults.items():
                if spec is None:
                    self._faults.pop(path, None)
                else:
                    self._faults[path] = dict(spec)

    def clear(self):
        with self._lock:
            self._faults.clear()

    def get(self, path):
        with self._lock:
            return dict(self._faults.get(path) or {})

    def snapshot(self):
        with self._lock:
            return {k: dict(v) for k, v in self._faults.items()}


class Handler(BaseHTTPRequestHandler):
    server_version = "computeagent-lab-images/1"
    protocol_version = "HTTP/1.1"

    # set on the class by make_server()
    root = None
    stats = None
    faults = None

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s - %s\n" % (time.strftime("%H:%M:%S"),
                                           self.address_string(), fmt % args))

    # -- helpers -------------------------------------------------------------------
    def _path(self):
        return urllib.parse.urlsplit(self.path).path

    def _send_json(self, obj, status=HTTPStatus.OK):
        body = json.dumps(obj, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_error(self, status, text=None):
        body = ((text or status.phrase) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _file_for(self, path):
        rel = posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")
        if not rel or rel == "." or rel.startswith("..") or rel.startswith("_"):
            return None
        full = os.path.realpath(os.path.join(self.root, rel))
        if not full.startswith(os.path.realpath(self.root) + os.sep):
            return None
        return full if os.path.isfile(full) else None

    # -- verbs ---------------------------------------------------------------------
    def do_GET(self):
        path = self._path()
        if path == "/_stats":
            return self._send_json(self.stats.snapshot())
        if path == "/_faults":
            return self._send_json(self.faults.snapshot())
        self.stats.count("GET", path)
        self._serve(path, body=True)

    def do_HEAD(self):
        path = self._path()
        if path in ("/_stats", "/_faults"):
            return self._send_json({})
        self.stats.count("HEAD", path)
        self._serve(path, body=False)

    def do_POST(self):
        path = self._path()
        body = self._read_body()
        if path == "/_stats/reset":
            self.stats.reset()
            return self._send_json(self.stats.snapshot())
        if path == "/_faults/reset":
            self.faults.clear()
            return self._send_json({})
        if path == "/_faults":
            try:
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                return self._send_error(HTTPStatus.BAD_REQUEST, str(exc))
            self.faults.set(spec)
            return self._send_json(self.faults.snapshot())
        self._send_error(HTTPStatus.NOT_FOUND)

    def do_DELETE(self):
        if self._path() == "/_faults":
            self.faults.clear()
            return self._send_json({})
        self._send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    def _serve(self, path, body):
        fault = self.faults.get(path)
        if fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault.get("status"):
            return self._send_error(HTTPStatus(int(fault["status"])))
        full = self._file_for(path)
        if full is None:
            return self._send_error(HTTPStatus.NOT_FOUND)
        size = os.path.getsize(full)
        start, end = 0, size - 1
        status = HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng and size > 0:
            first, _, last = rng[6:].partition("-")
            try:
                if first:
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                else:
                    start = max(0, size - int(last))
                if start > end or start >= size:
                    raise ValueError
                status = HTTPStatus.PARTIAL_CONTENT
            except ValueError:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        length = end - start + 1 if size else 0
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(os.path.getmtime(full)))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        truncate = fault.get("truncate")
        if truncate is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if not body:
            return
        rate = float(fault.get("rate") or 0)
        sent = 0
        limit = length if truncate is None else min(length, int(truncate))
        t0 = time.monotonic()
        with open(full, "rb") as f:
            if not rate and truncate is None:
                # zero-copy, as a production image server (nginx, Swift) does: on
                # the lab's 2 cores a Python read/write loop would take a core
                # from the client being measured
                try:
                    self.connection.sendfile(f, start, limit)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return
            f.seek(start)
            while sent < limit:
                chunk = f.read(min(CHUNK, limit - sent))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        if truncate is not None and sent < length:
            self.close_connection = True


def make_server(directory, bind, port, stats_file=None):
    handler = type("BoundHandler", (Handler,), {
        "root": os.path.abspath(directory),
        "stats": Stats(stats_file),
        "faults": Faults(),
    })
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="computeagent.lab.imageserver",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="directory served")
    parser.add_argument("--bind", default="192.0.2.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--stats-file", help="also write the counts here (JSON)")
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    server = make_server(args.dir, args.bind, args.port, args.stats_file)
    sys.stderr.write(f"serving {args.dir} on http://{args.bind}:{args.port}/\n")
    sys.stderr.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
