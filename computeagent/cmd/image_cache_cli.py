"""``computeagent-ctl image-cache precache|list``: pre-cache images on hosts and
watch them (RPC 1.5 ``cache_images`` / ``get_image_cache``).

    computeagent-ctl image-cache precache --host hosta --host hostb \\
        --image-id img1 --image-url http://images/img1.raw --image-size 67108864 \\
        --image-sha256 <hex> [--pin-until 2026-12-31T00:00:00Z] --wait
    computeagent-ctl image-cache precache --host hosta --image-json images.json
    computeagent-ctl image-cache list --host hosta [--json]

The functions take an RPC client (``rpc.api.ComputeAgentAPI``) and parsed
arguments, and return rows or an exit code, so any CLI framework can call them.
"""
import json
import sys
import time

LIST_COLUMNS = ["image_id", "state", "progress", "digest", "source", "pinned_until",
                "last_used", "in_use", "failure_reason"]
DONE = ("cached", "failed")


def add_parser(sub):
    """Add ``image-cache`` (with ``precache`` and ``list``) to argparse ``sub``."""
    p = sub.add_parser("image-cache", help="pre-cache images, list a host's cache")
    isub = p.add_subparsers(dest="image_cache_cmd", required=True)
    c = isub.add_parser("precache", help="ask hosts to fetch images into their cache")
    c.add_argument("--host", action="append", required=True,
                   help="a host to pre-cache on (repeat for several)")
    c.add_argument("--image-json", help="file with one image object or a list")
    c.add_argument("--image-id")
    c.add_argument("--image-url")
    c.add_argument("--image-format", default="raw", choices=["raw", "qcow2"])
    c.add_argument("--image-size", type=int)
    c.add_argument("--image-sha256")
    c.add_argument("--pin-until", help="UTC, YYYY-MM-DDTHH:MM:SSZ")
    c.add_argument("--wait", action="store_true",
                   help="show progress until every image is cached or failed")
    c.add_argument("--wait-timeout", type=float, default=3600)
    c = isub.add_parser("list", help="the image cache of a host")
    c.add_argument("--host", required=True)
    return p


def images_from_args(args):
    if args.image_json:
        with open(args.image_json) as f:
            data = json.load(f)
        return data if isinstance(data, list) else [data]
    missing = [n for n in ("image_id", "image_url", "image_size", "image_sha256")
               if getattr(args, n) is None]
    if missing:
        raise SystemExit("precache needs --image-json or --%s"
                         % ", --".join(m.replace("_", "-") for m in missing))
    return [{"id": args.image_id, "url": args.image_url,
             "disk_format": args.image_format, "size": args.image_size,
             "hash_algo": "sha256", "hash": args.image_sha256}]


def precache(agent, ctxt, hosts, images, pin_until=None):
    """Cast ``cache_images`` to every host."""
    for host in hosts:
        agent.cache_images(ctxt, host, images, pin_until=pin_until)


def list_rows(agent, ctxt, host):
    """``get_image_cache`` rows of ``host``, each with a ``progress`` text."""
    rows = agent.get_image_cache(ctxt, host)
    for r in rows:
        r["progress"] = progress_text(r)
    return rows


def progress_text(row):
    total = row.get("bytes_total") or 0
    done = row.get("bytes_done") or 0
    pct = int(100 * done / total) if total else (100 if row["state"] == "cached" else 0)
    return "%3d%% %d/%d MiB" % (pct, done >> 20, total >> 20)


def wait(agent, ctxt, hosts, image_ids, out=sys.stdout, timeout=3600, interval=0.5):
    """Poll every host until each image is cached or failed there; print one
    progress line per change. Returns {host: {image_id: row}}."""
    deadline = time.monotonic() + timeout
    seen = {}
    final = {}
    while True:
        pending = False
        for host in hosts:
            rows = {r["image_id"]: r for r in list_rows(agent, ctxt, host)}
            final[host] = {}
            for image_id in image_ids:
                row = rows.get(image_id) or {"image_id": image_id, "state": "queued",
                                             "bytes_done": 0, "bytes_total": 0}
                final[host][image_id] = row
                line = "%-12s %-24s %-11s %s%s" % (
                    host, image_id[:24], row["state"], progress_text(row),
                    ("  " + row["failure_reason"]) if row.get("failure_reason") else "")
                if seen.get((host, image_id)) != line and out is not None:
                    out.write(line + "\n")
                    out.flush()
                seen[(host, image_id)] = line
                if row["state"] not in DONE:
                    pending = True
        if not pending:
            return final
        if time.monotonic() > deadline:
            raise SystemExit("timed out waiting for the pre-cache")
        time.sleep(interval)


def run(agent, ctxt, args, table, out=sys.stdout):
    """Run an ``image-cache`` command; returns the exit code (1: some failed)."""
    if args.image_cache_cmd == "list":
        rows = list_rows(agent, ctxt, args.host)
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True, default=str), file=out)
        else:
            print(table(rows, LIST_COLUMNS), file=out)
        return 0
    images = images_from_args(args)
    precache(agent, ctxt, args.host, images, args.pin_until)
    if not args.wait:
        result = {"request_id": ctxt["request_id"], "hosts": args.host,
                  "images": [i.get("id") for i in images], "sent": "cache_images"}
        print(json.dumps(result, indent=2, sort_keys=True), file=out)
        return 0
    final = wait(agent, ctxt, args.host, [i["id"] for i in images],
                 out=None if args.json else out, timeout=args.wait_timeout)
    if args.json:
        print(json.dumps(final, indent=2, sort_keys=True, default=str), file=out)
    failed = [(h, i) for h, rows in final.items() for i, r in rows.items()
              if r["state"] != "cached"]
    return 1 if failed else 0
