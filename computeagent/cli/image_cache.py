"""Image-cache commands: ``image-cache precache`` and ``image-cache list`` (RPC 1.5).
The request and polling logic is in :mod:`computeagent.cmd.image_cache_cli`."""
from computeagent.cli import base
from computeagent.cmd import image_cache_cli as icc

ROW_COLUMNS = ("host",) + tuple(icc.LIST_COLUMNS)


class ImageCacheList(base.ListCommand):
    """List a host's image cache: state, progress, digest, source, pin, use."""

    COLUMNS = tuple(icc.LIST_COLUMNS)

    def rows(self, a):
        return self.conn.rpc(self.host, icc.list_rows, self.conn.api, self.ctxt,
                             self.host)


class ImageCachePrecache(base.ListCommand):
    """Ask hosts to fetch images into their cache (optionally pinned), and with
    --wait show progress until each image is cached or failed (exit 1 if one
    failed)."""

    needs_host = False
    COLUMNS = ROW_COLUMNS

    def add_arguments(self, p):
        p.add_argument("--host", action="append", required=True, metavar="HOST",
                       help="a host to pre-cache on (repeat for several)")
        p.add_argument("--image-json", metavar="FILE",
                       help="file with one image object (as in spawn) or a list")
        p.add_argument("--image-id", help="image id (without --image-json)")
        p.add_argument("--image-url", help="image URL (without --image-json)")
        p.add_argument("--image-format", default="raw", choices=["raw", "qcow2"],
                       help="disk format (default raw)")
        p.add_argument("--image-size", type=int, help="size in bytes")
        p.add_argument("--image-sha256", help="sha256 of the image, hex")
        p.add_argument("--pin-until", metavar="UTC",
                       help="keep the bases until then, YYYY-MM-DDTHH:MM:SSZ")
        p.add_argument("--wait", action="store_true",
                       help="show progress until every image is cached or failed")
        p.add_argument("--wait-timeout", type=float, default=3600, metavar="SECONDS",
                       help="give up waiting after this long (default 3600)")

    def rows(self, a):
        try:
            images = icc.images_from_args(a)
        except SystemExit as e:
            raise base.Failed(str(e))
        for h in a.host:
            self.host = h
            self.conn.rpc(h, self.conn.api.cache_images, self.ctxt, h, images,
                          pin_until=a.pin_until)
        ids = [i.get("id") for i in images]
        if not a.wait:
            return [{"host": h, "image_id": i, "state": "requested"}
                    for h in a.host for i in ids]
        try:
            final = icc.wait(self.conn.api, self.ctxt, a.host, ids,
                             out=self.app.stderr, timeout=a.wait_timeout)
        except SystemExit as e:
            raise base.Failed(str(e))
        rows = [dict(r, host=h) for h, per in final.items() for r in per.values()]
        if any(r["state"] != "cached" for r in rows):
            self.fail_after_output("some images failed to pre-cache")
        return rows


COMMANDS = {"image-cache list": ImageCacheList,
            "image-cache precache": ImageCachePrecache}
