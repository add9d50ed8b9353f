"""The README's main job: a two-host lab, then spawn -> live migrate A->B -> back
-> resize to B + confirm, with progress and a verification summary. Everything goes through the RPC API
(this process plays the scheduler)."""
import json
import os
import shutil
import time
import uuid as uuidlib

from computeagent.lab import guest as lab_guest

A, B = "hosta", "hostb"
INSTANCES = "/var/lib/computeagent/instances"


def _say(msg=""):
    print(msg, flush=True)


def _step(title):
    _say("\n== %s" % title)


def _wait(fn, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:
            last = e
        time.sleep(0.3)
    raise RuntimeError("timed out waiting for %s (last: %r)" % (what, last))


def _chain(lab, host, uuid):
    out = lab.host_exec(host, ["qemu-img", "info", "-U", "-f", "qcow2", "--backing-chain",
                               "--output=json", "%s/%s/disk" % (INSTANCES, uuid)]).stdout
    return json.loads(out)


def _show_chain(chain):
    for i, layer in enumerate(chain):
        _say("   %s%s  format=%s virtual-size=%d%s" % (
            "  " * i, layer["filename"], layer["format"], layer["virtual-size"],
            ("  backing=%s (%s)" % (layer.get("full-backing-filename"),
                                    layer.get("backing-filename-format"))
             if layer.get("full-backing-filename") else "")))


def _guest_check(lab, host, uuid, timeout=90):
    path = "%s/%s/console.log" % (INSTANCES, uuid)
    return lab_guest.wait_for_check(
        lambda: lab.host_exec(host, ["cat", path], check=False).stdout, timeout=timeout)


def run(lab_dir=None, keep=False):
    from oslo_config import cfg
    from computeagent.cmd import ctl
    from computeagent.lab import lab as labmod
    from computeagent.rpc import api

    results = []
    t_start = time.monotonic()
    _step("building the lab guest (cached after the first run)")
    art = lab_guest.build_guest()
    _say("   kernel %s, base %s (%d MiB)" % (art.kernel_version, art.base_raw,
                                             art.virtual_size >> 20))
    _step("lab up: RabbitMQ, image server, 2 libvirtd hypervisors, 2 agents")
    lab = labmod.Lab(lab_dir) if lab_dir else labmod.Lab()
    extra = {"libvirt": {"kernel_path": art.kernel, "initrd_path": art.initrd,
                         "kernel_cmdline": art.cmdline, "shutdown_timeout": "1"},
             "network": {"allowed_bridges": "br-lab"},
             "DEFAULT": {"image_cache_manager_interval": "0"}}
    t0 = time.monotonic()
    lab.up(hosts=2, agents=True, extra_conf=extra)
    _say("   up in %.1f s: hosts %s" % (time.monotonic() - t0, ", ".join(
        "%s=%s" % (h, lab.host_ip(h)) for h in lab.host_names)))
    transport = None
    try:
        cfg.CONF([], project="computeagent", default_config_files=[])
        lab.configure_messaging(cfg.CONF)  # amqps, the lab CA
        transport = api.get_transport(cfg.CONF, url=lab.transport_url(from_root=True))
        agent = api.ComputeAgentAPI(transport, timeout=30)
        ctxt = {"request_id": "req-demo-" + uuidlib.uuid4().hex[:8]}
        _wait(lambda: all(agent.get_host_status(ctxt, h, timeout=5)["libvirt_connected"]
                          for h in (A, B)), 60, "agents serving")

        fname = "guest-%s.raw" % art.base_sha256[:16]   # named by content
        dst = os.path.join(lab.image_dir, fname)
        if not os.path.exists(dst):
            shutil.copyfile(art.base_raw, dst)
        image = {"id": "lab-guest-%s" % art.base_sha256[:12], "url": lab.image_url(fname),
                 "disk_format": "raw", "size": os.path.getsize(dst),
                 "hash_algo": "sha256", "hash": art.base_sha256}
        uuid = str(uuidlib.uuid4())
        ips = ["10.0.0.5", "10.0.0.6"]
        inst = {"uuid": uuid, "name": "demo <vm>",
                "flavor": {"name": "lab.small", "vcpus": 1, "memory_mb": 96, "root_gb": 1},
                "image": image,
                "networks": [{"id": "net1", "bridge": "br-lab", "mac": "52:54:00:de:00:01",
                              "fixed_ips": ips}],
                "metadata": {"demo": "yes"}}

        _step("spawn on %s (cast over RabbitMQ)" % A)
        t0 = time.monotonic()
        agent.spawn(ctxt, A, inst)
        got = ctl.wait_for(agent, ctxt, A, uuid, ctl._settled, timeout=120)
        _say("   state=%s power=%s in %.1f s" % (got["state"], got["power_state"],
                                                 time.monotonic() - t0))
        results.append(("spawn ACTIVE on hosta", got["state"] == "ACTIVE"))
        chain = _chain(lab, A, uuid)
        _show_chain(chain)
        results.append(("chain: overlay -> _base, formats explicit",
                        len(chain) == 2 and chain[0].get("backing-filename-format") == "raw"))
        _say("   fixed IPs: %s" % got["networks"][0]["fixed_ips"])
        ebt = lab.host_exec(A, ["ebtables", "-t", "nat", "-L"]).stdout
        on_wire = [ip for ip in ips if "--ip-src %s" % ip in ebt]
        _say("   ebtables on %s allows: %s" % (A, on_wire))
        results.append(("every fixed IP in ebtables", on_wire == ips))
        chk = _guest_check(lab, A, uuid)
        _say("   guest console: GUESTCHECK %d %s" % (chk.n, "OK" if chk.ok else "FAIL"))
        results.append(("guest checks its files on hosta", chk.ok))

        for src, dest in ((A, B), (B, A)):
            _step("live migrate %s -> %s (block migration, overlay only)" % (src, dest))
            lab.reset_image_stats()
            mid = "demo-" + uuidlib.uuid4().hex[:8]
            agent.live_migrate(ctxt, src, uuid, dest, mid)
            mig = ctl.watch_migration(agent, ctxt, src, mid, timeout=300)
            ok = mig is not None and mig["status"] == "completed"
            _say("   status=%s on the wire: disk %.1f MiB (overlay only), memory %.1f MiB;"
                 " downtime=%s ms; base from %s; image downloads=%d" % (
                     mig and mig["status"], (mig and mig["disk_processed"] or 0) / 2**20,
                     (mig and mig["memory_processed"] or 0) / 2**20,
                     mig and mig["downtime_ms"],
                     ((mig or {}).get("dest_prepare") or {}).get("base_from"),
                     lab.image_get_count(fname)))
            if not ok:
                _say("   error: %s" % (mig and mig["error"]))
            results.append(("live migration %s->%s completed" % (src, dest), ok))
            if ok:
                got = agent.get_instance(ctxt, dest, uuid)
                chain = _chain(lab, dest, uuid)
                _show_chain(chain)
                results.append(("chain verified on %s" % dest,
                                got["disk"]["backing_file"] ==
                                chain[0].get("full-backing-filename")))
                chk = _guest_check(lab, dest, uuid)
                _say("   guest console on %s: GUESTCHECK %d %s" % (
                    dest, chk.n, "OK" if chk.ok else "FAIL"))
                results.append(("guest checks its files on %s" % dest, chk.ok))

        _step("resize to %s (cold migration, overlay only) with a bigger flavor, "
              "then confirm" % B)
        big = {"name": "lab.big", "vcpus": 2, "memory_mb": 128, "root_gb": 2}
        mid = "demo-rz-" + uuidlib.uuid4().hex[:8]
        agent.resize(ctxt, A, uuid, B, big, mid)
        mig = _wait(lambda: (lambda m: m if m["status"] in (
            "verify-resize", "failed") else None)(agent.get_migration(ctxt, A, mid)),
            180, "resize")
        ok = mig["status"] == "verify-resize"
        _say("   status=%s overlay copied=%.1f MiB%s" % (
            mig["status"], mig["data_total"] / 2**20,
            "" if ok else " error=%s" % mig["error"]))
        results.append(("resize to hostb reached RESIZE_VERIFY", ok))
        if ok:
            agent.confirm_resize(ctxt, B, uuid, mid)
            _wait(lambda: agent.get_migration(ctxt, B, mid)["status"] == "confirmed",
                  120, "confirm")
            got = ctl.wait_for(agent, ctxt, B, uuid, ctl._settled, timeout=60)
            _say("   confirmed: state=%s flavor=%s" % (got["state"], got["flavor"]))
            results.append(("resize confirmed, new flavor on hostb",
                            got["state"] == "ACTIVE" and got["flavor"] == big))
            chain = _chain(lab, B, uuid)
            _show_chain(chain)
            results.append(("chain verified after resize (2 GiB overlay on _base)",
                            len(chain) == 2 and chain[0]["virtual-size"] == 2 * 2**30))
            chk = _guest_check(lab, B, uuid)
            info = lab_guest.parse_info(lab.host_exec(
                B, ["cat", "%s/%s/console.log" % (INSTANCES, uuid)]).stdout)
            _say("   guest on hostb: GUESTCHECK %d %s, sees %s" % (
                chk.n, "OK" if chk.ok else "FAIL", info))
            results.append(("guest checks its files after resize, sees 2 vCPUs",
                            chk.ok and bool(info) and info["cpus"] == 2))
        owner = B if ok else A

        _step("delete")
        agent.delete(ctxt, owner, uuid)
        from computeagent import exception
        def gone():
            try:
                agent.get_instance(ctxt, owner, uuid)
                return False
            except exception.InstanceNotFound:
                return True
        _wait(gone, 60, "delete")
        results.append(("deleted", True))
    finally:
        try:
            transport.cleanup()
        except Exception:
            pass
        if not keep:
            _step("lab down")
            lab.down()

    _step("verification summary (%.1f s)" % (time.monotonic() - t_start))
    width = max(len(r[0]) for r in results)
    for name, ok in results:
        _say("   %s  %s" % (name.ljust(width), "OK" if ok else "FAILED"))
    failed = [r for r in results if not r[1]]
    _say("\n%d checks, %d failed" % (len(results), len(failed)))
    return 1 if failed else 0
