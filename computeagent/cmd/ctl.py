"""``computeagent-ctl``: an operator CLI that speaks the RPC API, like a scheduler.

Every command takes ``--host`` (the agent to talk to) and prints a readable table,
or JSON with ``--json``.
"""
import argparse
import json
import sys
import time
import uuid as uuidlib

from computeagent.conf import CONF
from computeagent import exception


def _table(rows, cols):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c)
              for c in cols]
    line = "  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))
    out = [line]
    for r in rows:
        out.append("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths)))
    return "\n".join(out)


def _kv(d, indent=""):
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.append("%s%s:" % (indent, k))
            out.append(_kv(v, indent + "  "))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            out.append("%s%s:" % (indent, k))
            for item in v:
                out.append("%s  - %s" % (indent, json.dumps(item, sort_keys=True)))
        else:
            out.append("%s%-14s %s" % (indent, k + ":", v))
    return "\n".join(out)


def _parse_network(text):
    """id=net1,bridge=br-lab,mac=52:54:00:..,ips=10.0.0.5;10.0.0.6"""
    net = {"fixed_ips": []}
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k == "ips":
            net["fixed_ips"] = [a for a in v.split(";") if a]
        else:
            net[k] = v
    return net


def build_parser():
    p = argparse.ArgumentParser(prog="computeagent-ctl", description=__doc__)
    p.add_argument("--config-file", action="append", default=[])
    p.add_argument("--transport-url", help="rabbit://user:pw@host:port/")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--timeout", type=int, default=30)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("spawn", help="create an instance")
    s.add_argument("--host", required=True)
    s.add_argument("--from-json", help="file with the whole instance payload")
    s.add_argument("--uuid")
    s.add_argument("--name")
    s.add_argument("--vcpus", type=int, default=1)
    s.add_argument("--memory-mb", type=int, default=96)
    s.add_argument("--root-gb", type=int, default=1)
    s.add_argument("--flavor-name", default="custom")
    s.add_argument("--image-id")
    s.add_argument("--image-url")
    s.add_argument("--image-format", default="raw", choices=["raw", "qcow2"])
    s.add_argument("--image-size", type=int)
    s.add_argument("--image-sha256")
    s.add_argument("--network", action="append", default=[],
                   help="id=ID,bridge=BR,mac=MAC,ips=IP1;IP2")
    s.add_argument("--wait", action="store_true")

    for name in ("show", "stop", "start", "reboot", "delete"):
        c = sub.add_parser(name)
        c.add_argument("--host", required=True)
        c.add_argument("uuid")
        if name != "show":
            c.add_argument("--wait", action="store_true")
    c = sub.add_parser("list")
    c.add_argument("--host", required=True)
    c = sub.add_parser("host-status")
    c.add_argument("--host", required=True)
    for name in ("add-ip", "remove-ip"):
        c = sub.add_parser(name)
        c.add_argument("--host", required=True)
        c.add_argument("uuid")
        c.add_argument("network_id")
        c.add_argument("address")
        c.add_argument("--wait", action="store_true")
    c = sub.add_parser("live-migrate", help="live block migration to another host")
    c.add_argument("--host", required=True, help="the host running the instance")
    c.add_argument("uuid")
    c.add_argument("dest")
    c.add_argument("--migration-id", help="idempotency key (default: a new uuid)")
    c.add_argument("--wait", action="store_true",
                   help="show progress until the migration ends")
    c = sub.add_parser("resize", help="resize / cold-migrate (dest may be the same host)")
    c.add_argument("--host", required=True, help="the host running the instance")
    c.add_argument("uuid")
    c.add_argument("dest")
    c.add_argument("--vcpus", type=int, required=True)
    c.add_argument("--memory-mb", type=int, required=True)
    c.add_argument("--root-gb", type=int, required=True)
    c.add_argument("--flavor-name", default="custom")
    c.add_argument("--migration-id")
    c.add_argument("--wait", action="store_true", help="wait for RESIZE_VERIFY")
    for name in ("confirm", "revert"):
        c = sub.add_parser(name, help="%s a resize (on the host that runs it now)" % name)
        c.add_argument("--host", required=True)
        c.add_argument("uuid")
        c.add_argument("migration_id")
        c.add_argument("--wait", action="store_true")
    c = sub.add_parser("migration-show")
    c.add_argument("--host", required=True)
    c.add_argument("migration_id")
    c = sub.add_parser("migration-list")
    c.add_argument("--host", required=True)
    c = sub.add_parser("migration-abort")
    c.add_argument("--host", required=True)
    c.add_argument("migration_id")
    return p


def progress_bar(mig, width=30):
    pct = mig.get("progress") or 0
    filled = int(width * pct / 100)
    return "[%s%s] %3d%% %-14s %s/%s MiB" % (
        "#" * filled, "-" * (width - filled), pct, mig["status"],
        (mig.get("data_processed") or 0) // (1 << 20),
        (mig.get("data_total") or 0) // (1 << 20))


def watch_migration(agent, ctxt, host, mid, out=sys.stdout, timeout=3600,
                    interval=0.5, show=True):
    """Poll get_migration until it ends, drawing a progress bar on a tty."""
    deadline = time.monotonic() + timeout
    tty = show and out.isatty()
    mig = None
    last_line = None
    while time.monotonic() < deadline:
        try:
            mig = agent.get_migration(ctxt, host, mid)
        except exception.MigrationNotFound:
            mig = None
        if mig is not None:
            line = progress_bar(mig)
            if tty:
                out.write("\r" + line)
                out.flush()
            elif show and line != last_line:
                out.write(line + "\n")
            last_line = line
            if mig["status"] in ("completed", "failed", "cancelled"):
                break
        time.sleep(interval)
    if tty:
        out.write("\n")
    return mig


def _wait_status(agent, ctxt, host, mid, statuses, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            mig = agent.get_migration(ctxt, host, mid)
            if mig["status"] in statuses:
                return mig
        except exception.MigrationNotFound:
            pass
        time.sleep(0.5)
    raise SystemExit("timed out waiting for migration %s" % mid)


def _client(args):
    from computeagent.rpc import api
    conf_args = []
    for f in args.config_file:
        conf_args += ["--config-file", f]
    CONF(conf_args, project="computeagent", default_config_files=[])
    transport = api.get_transport(CONF, url=args.transport_url)
    return api.ComputeAgentAPI(transport, timeout=args.timeout)


def wait_for(agent, ctxt, host, uuid, pred, timeout=120, interval=0.3):
    deadline = time.monotonic() + timeout
    inst = None
    while time.monotonic() < deadline:
        try:
            inst = agent.get_instance(ctxt, host, uuid)
        except exception.InstanceNotFound:
            inst = None
        if pred(inst):
            return inst
        time.sleep(interval)
    raise SystemExit("timed out; last seen: %s" % (inst and {k: inst.get(k) for k in (
        "state", "task_state", "power_state", "fault")}))


def _settled(inst):
    return inst is not None and inst["task_state"] is None and \
        inst["state"] not in ("BUILDING",)


def main(argv=None):
    args = build_parser().parse_args(argv)
    agent = _client(args)
    ctxt = {"request_id": "req-" + str(uuidlib.uuid4())}
    out = None
    try:
        if args.cmd == "spawn":
            if args.from_json:
                with open(args.from_json) as f:
                    inst = json.load(f)
            else:
                inst = {"uuid": args.uuid or str(uuidlib.uuid4()),
                        "name": args.name or "instance",
                        "flavor": {"name": args.flavor_name, "vcpus": args.vcpus,
                                   "memory_mb": args.memory_mb, "root_gb": args.root_gb},
                        "image": {"id": args.image_id, "url": args.image_url,
                                  "disk_format": args.image_format,
                                  "size": args.image_size, "hash_algo": "sha256",
                                  "hash": args.image_sha256},
                        "networks": [_parse_network(n) for n in args.network],
                        "metadata": {}}
            agent.spawn(ctxt, args.host, inst)
            out = {"uuid": inst.get("uuid"), "request_id": ctxt["request_id"]}
            if args.wait:
                out = wait_for(agent, ctxt, args.host, inst["uuid"], _settled)
        elif args.cmd == "show":
            out = agent.get_instance(ctxt, args.host, args.uuid)
        elif args.cmd == "list":
            out = agent.list_instances(ctxt, args.host)
        elif args.cmd == "host-status":
            out = agent.get_host_status(ctxt, args.host)
        elif args.cmd in ("stop", "start", "reboot", "delete"):
            getattr(agent, args.cmd)(ctxt, args.host, args.uuid)
            out = {"uuid": args.uuid, "request_id": ctxt["request_id"], "sent": args.cmd}
            if args.wait and args.cmd == "delete":
                wait_for(agent, ctxt, args.host, args.uuid, lambda i: i is None)
                out["state"] = "DELETED"
            elif args.wait:
                out = wait_for(agent, ctxt, args.host, args.uuid,
                               lambda i: i is not None and i["task_state"] is None)
        elif args.cmd in ("add-ip", "remove-ip"):
            fn = agent.add_fixed_ip if args.cmd == "add-ip" else agent.remove_fixed_ip
            fn(ctxt, args.host, args.uuid, args.network_id, args.address)
            out = {"uuid": args.uuid, "sent": args.cmd, "address": args.address}
            if args.wait:
                want = args.cmd == "add-ip"
                out = wait_for(agent, ctxt, args.host, args.uuid, lambda i: i and (
                    any(args.address in n["fixed_ips"] for n in i["networks"]) == want))
        elif args.cmd == "live-migrate":
            mid = args.migration_id or str(uuidlib.uuid4())
            agent.live_migrate(ctxt, args.host, args.uuid, args.dest, mid)
            out = {"migration_id": mid, "request_id": ctxt["request_id"]}
            if args.wait:
                mig = watch_migration(agent, ctxt, args.host, mid,
                                      show=not args.json)
                out = {"migration": mig}
                if mig and mig["status"] == "completed":
                    out["instance"] = agent.get_instance(ctxt, args.dest, args.uuid)
                if not mig or mig["status"] != "completed":
                    _print(out, args.json)
                    return 2
        elif args.cmd == "resize":
            mid = args.migration_id or str(uuidlib.uuid4())
            flavor = {"name": args.flavor_name, "vcpus": args.vcpus,
                      "memory_mb": args.memory_mb, "root_gb": args.root_gb}
            agent.resize(ctxt, args.host, args.uuid, args.dest, flavor, mid)
            out = {"migration_id": mid, "request_id": ctxt["request_id"]}
            if args.wait:
                mig = _wait_status(agent, ctxt, args.host, mid,
                                   ("verify-resize", "failed"))
                out = {"migration": mig}
                if mig["status"] == "verify-resize":
                    out["instance"] = agent.get_instance(ctxt, args.dest, args.uuid)
        elif args.cmd in ("confirm", "revert"):
            fn = agent.confirm_resize if args.cmd == "confirm" else agent.revert_resize
            fn(ctxt, args.host, args.uuid, args.migration_id)
            out = {"migration_id": args.migration_id, "sent": args.cmd}
            if args.wait:
                out = {"migration": _wait_status(
                    agent, ctxt, args.host, args.migration_id,
                    ("confirmed", "reverted", "failed"))}
        elif args.cmd == "migration-show":
            out = agent.get_migration(ctxt, args.host, args.migration_id)
        elif args.cmd == "migration-list":
            out = agent.list_migrations(ctxt, args.host)
            if not args.json:
                print(_table(out, ["id", "instance_uuid", "source", "dest", "status",
                                   "progress", "downtime_ms"]))
                return 0
        elif args.cmd == "migration-abort":
            agent.abort_migration(ctxt, args.host, args.migration_id)
            out = {"migration_id": args.migration_id, "sent": "abort"}
    except exception.ComputeAgentError as e:
        print("error: %s" % str(e).splitlines()[0], file=sys.stderr)
        return 1
    _print(out, args.json)
    return 0


def _print(out, as_json):
    if as_json:
        print(json.dumps(out, indent=2, sort_keys=True, default=str))
    elif isinstance(out, list):
        print(_table(out, ["uuid", "name", "state", "task_state", "power_state"]))
    elif isinstance(out, dict):
        print(_kv(out))


if __name__ == "__main__":
    sys.exit(main())
