"""computeagent-lab: bring the lab of real hypervisors up and down.

    computeagent-lab [--lab-dir D] up [--hosts N] [--broker-nodes 1|3] [--no-agents] [--set SECTION.OPT=VALUE]
    computeagent-lab [--lab-dir D] status [--json]
    computeagent-lab [--lab-dir D] down [--purge]
    computeagent-lab [--lab-dir D] exec HOST -- COMMAND...
    computeagent-lab [--lab-dir D] restart-libvirtd HOST
    computeagent-lab [--lab-dir D] restart-broker
    computeagent-lab [--lab-dir D] broker-node {stop,kill,start,status} [K]

The lab dir defaults to $COMPUTEAGENT_LAB_DIR or /var/lib/computeagent-lab; its lab.json
describes everything (hosts, IPs, PIDs, URLs, paths).
"""
import argparse
import json
import logging
import sys
import time

from computeagent.lab import Lab, LabError, default_lab_dir


def _parse_set(items):
    extra = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        section, dot, opt = key.rpartition(".")
        if not sep or not opt:
            raise SystemExit(f"--set expects SECTION.OPTION=VALUE, got {item!r}")
        extra.setdefault(section or "DEFAULT", {})[opt] = value
    return extra or None


def cmd_up(lab, args):
    t0 = time.monotonic()
    lab.up(hosts=args.hosts, agents=not args.no_agents, extra_conf=_parse_set(args.set),
           broker_nodes=args.broker_nodes)
    st = lab.state
    print(f"lab up in {time.monotonic() - t0:.2f} s ({args.lab_dir}/lab.json)")
    for name in lab.host_names:
        h = st["hosts"][name]
        print(f"  {name:6} {h['ip']:12} {h['libvirt_uri']}")
    print(f"  broker  {lab.transport_url(from_root=True)}  (hosts: "
          f"{lab.transport_url(from_root=False)})")
    ssl = lab.rabbit_ssl_options(from_root=True)
    if ssl:
        print(f"  broker  amqps only: [oslo_messaging_rabbit] ssl = true, "
              f"ssl_ca_file = {ssl['ssl_ca_file']}")
    print(f"  images  {st['images']['base_url']}  <- {st['images']['dir']}")
    return 0


def cmd_status(lab, args):
    status = lab.status()
    if args.json:
        status["lab"] = lab.state
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0 if status["healthy"] else 1
    print(f"lab {status['lab_dir']}: {status['state']}, "
          f"{'healthy' if status['healthy'] else 'NOT healthy'}")
    if status["state"] == "absent":
        return 1
    b = status.get("broker") or {}
    print(f"  broker  pid {b.get('pid')}  alive={b.get('alive')}  "
          f"listening={b.get('listening')}")
    im = status.get("images") or {}
    print(f"  images  pid {im.get('pid')}  http={im.get('http')}  {im.get('url')}")
    for name, h in (status.get("hosts") or {}).items():
        print(f"  {name:6} {h['ip']:12} init={h['init']}({h['init_pid']}) "
              f"libvirtd={h['libvirtd_pid']} libvirt={h['libvirt']} "
              f"agent={h['agent_pid'] or '-'}")
    return 0 if status["healthy"] else 1


def cmd_down(lab, args):
    t0 = time.monotonic()
    lab.down(purge=args.purge)
    print(f"lab down in {time.monotonic() - t0:.2f} s")
    return 0


def cmd_exec(lab, args):
    argv = args.command
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit("exec: no command")
    res = lab.host_exec(args.host, argv, check=False, capture=False, timeout=None)
    return res.returncode


def cmd_restart_libvirtd(lab, args):
    lab.restart_libvirtd(args.host)
    print(f"{args.host}: libvirtd pid {lab.libvirtd_pid(args.host)}")
    return 0


def cmd_restart_broker(lab, args):
    t0 = time.monotonic()
    lab.restart_broker()
    print(f"broker restarted in {time.monotonic() - t0:.2f} s")
    return 0


def cmd_broker_node(lab, args):
    if args.action == "status":
        for k, n in enumerate(lab.broker_nodes(), start=1):
            print(f"  node {k}  {n['node']:24} port {n['port']}  "
                  f"running={lab.broker_node_running(k)}")
        return 0
    if args.node is None:
        raise SystemExit("broker-node stop|kill|start needs a node number")
    t0 = time.monotonic()
    {"stop": lab.stop_broker_node, "kill": lab.kill_broker_node,
     "start": lab.start_broker_node}[args.action](args.node)
    print(f"broker node {args.node}: {args.action} done in {time.monotonic() - t0:.2f} s")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="computeagent-lab",
                                     description="Lab of real libvirt/QEMU hypervisors "
                                                 "on one machine.")
    parser.add_argument("--lab-dir", default=None,
                        help="lab directory (default: $COMPUTEAGENT_LAB_DIR or "
                             "/var/lib/computeagent-lab)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("up", help="bring the lab up (idempotent)")
    p.add_argument("--hosts", type=int, default=2, help="number of hypervisors (default 2)")
    p.add_argument("--no-agents", action="store_true", help="do not start the agents")
    p.add_argument("--broker-nodes", type=int, default=1, choices=(1, 2, 3),
                   help="RabbitMQ nodes, clustered (default 1)")
    p.add_argument("--set", action="append", metavar="SECTION.OPT=VALUE",
                   help="extra agent option (repeatable), e.g. libvirt.kernel_path=/x")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("status", help="show the lab's health (exit 1 if not healthy)")
    p.add_argument("--json", action="store_true", help="machine-readable, with lab.json")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("down", help="stop everything and remove the lab's network")
    p.add_argument("--purge", action="store_true", help="also delete the lab dir")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("exec", help="run a command inside a lab host")
    p.add_argument("host")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser("restart-libvirtd", help="restart one host's libvirtd")
    p.add_argument("host")
    p.set_defaults(func=cmd_restart_libvirtd)

    p = sub.add_parser("restart-broker", help="restart the lab's RabbitMQ node")
    p.set_defaults(func=cmd_restart_broker)

    p = sub.add_parser("broker-node", help="stop (clean), kill (SIGKILL) or start one "
                                           "RabbitMQ node of the lab, or list them")
    p.add_argument("action", choices=("stop", "kill", "start", "status"))
    p.add_argument("node", type=int, nargs="?", help="node number, 1..N")
    p.set_defaults(func=cmd_broker_node)

    p = sub.add_parser("demo", help="the README's main job: lab up, spawn, live "
                                    "migrate A->B->A, verification summary, lab down")
    p.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(lab, args):
    from computeagent.lab import demo
    return demo.run(lab_dir=args.lab_dir, keep=args.keep)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.lab_dir = args.lab_dir or default_lab_dir()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    lab = Lab(args.lab_dir)
    try:
        return args.func(lab, args)
    except LabError as exc:
        print(f"computeagent-lab: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `computeagent-lab status | head -1`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
