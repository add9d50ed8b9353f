"""The lab's services in the root namespace: its private RabbitMQ node and its image
HTTP server (computeagent.lab.broker, computeagent.lab.imageserver)."""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

from computeagent.lab import broker as _broker
from computeagent.lab import procutil
from computeagent.lab.errors import LabError
from computeagent.lab.layout import PKG_DIR
from computeagent.lab.util import _no_proxy_opener, _tail


class BrokerMixin:
    """The lab's RabbitMQ node (part of :class:`Lab`)."""

    def _broker_settings(self):
        self._refresh()
        b = self.state.get("broker")
        if not b:
            raise LabError("the lab has no broker (is it up?)")
        return b

    def broker_running(self):
        return _broker.is_running(self._broker_settings())

    def stop_broker(self):
        with self._locked():
            _broker.stop(self._broker_settings(), stop_epmd=False)
            self._save()

    def start_broker(self, timeout=60.0):
        with self._locked():
            b = self._broker_settings()
            if not _broker.is_running(b):
                _broker.start(b)
                self._keep(b.get("_proc"))
                self._save()
                _broker.wait_ready(b, timeout=timeout)
            self._save()

    def restart_broker(self, timeout=60.0):
        """Stop the lab's RabbitMQ node and start it again (same node, same data, same
        user); returns when clients can log in again.  Only this node is touched."""
        with self._locked():
            self.stop_broker()
            self.start_broker(timeout=timeout)

    def rabbitmqctl(self, *args, check=True, timeout=60):
        """Run ``rabbitmqctl <args>`` against the lab node (~1 s per call)."""
        return _broker.rabbitmqctl(self._broker_settings(), *args, check=check,
                                   timeout=timeout)

class ImageServerMixin:
    """The lab's image server: URLs, request statistics, faults, start-up (part of
    :class:`Lab`)."""

    @property
    def image_dir(self):
        """``<lab dir>/images``: files there are served by the image server."""
        return os.path.join(self.lab_dir, "images")

    images_dir = image_dir

    def image_url(self, filename):
        """URL of ``<lab dir>/images/<filename>``, valid from the root namespace and from
        every host (the image server listens on the bridge address)."""
        self._refresh()
        return self.state["images"]["base_url"] + filename.lstrip("/")
    def _images_request(self, method, path, body=None, timeout=5):
        url = self.state["images"]["base_url"] + path.lstrip("/")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with _no_proxy_opener().open(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def image_stats(self):
        """{"get": {"/<file>": n}, "head": {...}} since the last reset."""
        return self._images_request("GET", "_stats")

    def image_get_count(self, filename):
        """Number of GET requests for ``filename`` since the last reset."""
        return self.image_stats()["get"].get("/" + filename.lstrip("/"), 0)

    def reset_image_stats(self):
        self._images_request("POST", "_stats/reset", body={})

    def set_image_fault(self, filename, status=None, delay=None, truncate=None, rate=None):
        """Make the image server misbehave for ``filename``: reply ``status``, sleep
        ``delay`` s first, close after ``truncate`` body bytes, or serve at ``rate``
        bytes/s.  All None clears the fault of that file."""
        spec = {k: v for k, v in dict(status=status, delay=delay, truncate=truncate,
                                      rate=rate).items() if v is not None}
        self._images_request("POST", "_faults", body={"/" + filename.lstrip("/"): spec or None})

    def clear_image_faults(self):
        self._images_request("DELETE", "_faults")
    def _start_image_server(self):
        im = self.state["images"]
        os.makedirs(im["dir"], exist_ok=True)
        env = dict(os.environ)
        pkg_parent = os.path.dirname(os.path.dirname(PKG_DIR))
        env["PYTHONPATH"] = pkg_parent + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(im["log"], "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "computeagent.lab.imageserver", "--dir", im["dir"],
                 "--bind", im["bind"], "--port", str(im["port"]),
                 "--stats-file", im["stats_file"]],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd=self.lab_dir, env=env)
        self._keep(proc)
        im["ref"] = procutil.proc_ref(proc.pid)
        procutil.write_pidfile(im["pid_file"], proc.pid)

    def _image_server_ok(self):
        try:
            self._images_request("GET", "_stats", timeout=2)
            return True
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def _wait_image_server(self, deadline):
        im = self.state["images"]
        while not self._image_server_ok():
            if not procutil.ref_alive(im.get("ref")):
                raise LabError("image server exited; see " + im["log"] + ":\n"
                               + _tail(im["log"]))
            if time.monotonic() > deadline:
                raise LabError("image server not ready; see " + im["log"])
            time.sleep(0.02)

