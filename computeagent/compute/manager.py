"""Flows, task states, locks and records: the agent's brain.

Threads: RPC handlers run in oslo.messaging's threading executor and must return
quickly; long work (spawn, power operations, migrations) goes to a bounded
``ThreadPoolExecutor``. Every operation that changes an instance holds that
instance's re-entrant lock (:mod:`computeagent.compute.locks`), here and in the
migration flows, so two casts for the same instance never interleave.
"""
import concurrent.futures
import logging
import os
import threading

from computeagent import context
from computeagent import exception
from computeagent.compute import locks
from computeagent.compute import states
from computeagent import utils
from computeagent.images import fetch
from computeagent.images import qemu_img
from computeagent.rpc import schema
from computeagent.virt import guest as vguest

LOG = logging.getLogger(__name__)

GiB = 1024 ** 3


_instance_lock = locks.instance_lock


class ComputeManager:
    def __init__(self, conf, db, driver, image_cache, notifier, peer_api=None):
        self.conf = conf
        self.host = conf.host
        self.db = db
        self.driver = driver
        self.image_cache = image_cache
        self.notifier = notifier
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=conf.long_task_workers, thread_name_prefix="task")
        self._sync_lock = threading.Lock()
        from computeagent.compute import live_migration
        self.live = live_migration.LiveMigrationFlows(self, peer_api)
        from computeagent.compute import resize
        self.resize = resize.ResizeFlows(self, peer_api)
        from computeagent.compute import precache
        self.precache = precache.ImageCacheFlows(self, peer_api)
        from computeagent.configdrive import flows as configdrive  # issue 13
        self.configdrive = configdrive.ConfigDriveFlows(self)

    # -- helpers -----------------------------------------------------------
    def _submit(self, ctx, fn, *args):
        def run():
            context.adopt(ctx)
            try:
                fn(ctx, *args)
            except Exception:
                LOG.exception("task %s failed", getattr(fn, "__name__", fn))
        return self.pool.submit(run)

    def _get_own(self, uuid):
        try:
            inst = self.db.instance_get(uuid)
        except exception.InstanceNotFound:
            moved = [m for m in self.db.migration_get_all(instance_uuid=uuid)
                     if m["source"] == self.host and m["status"] == states.MIG_COMPLETED]
            if moved:
                raise exception.InstanceNotFound(
                    "Instance %s could not be found on %s: it moved to %s "
                    "(migration %s)" % (uuid, self.host, moved[-1]["dest"],
                                        moved[-1]["id"]), uuid=uuid)
            raise
        if inst["host"] != self.host:
            raise exception.InstanceNotFound(uuid=uuid)
        return inst

    def _set_error(self, ctx, uuid, action, fault, clear_task=True):
        values = {"state": states.ERROR, "fault": fault[:4000]}
        if clear_task:
            values["task_state"] = None
        try:
            inst = self.db.instance_update(uuid, **values)
        except exception.InstanceNotFound:
            inst = {"uuid": uuid, "state": states.ERROR, "host": self.host}
        self.notifier.instance(ctx, inst, action, "error", fault=fault)
        return inst

    def report_cast_error(self, ctx, action, kwargs, message):
        """A cast was refused at the edge or failed before it started.

        For a spawn whose uuid is valid, the instance is recorded in ERROR with the
        fault (unless a record exists: then nothing changes). Other casts leave the
        instance as it is and only report the fault.
        """
        instance = kwargs.get("instance")
        uuid = None
        if isinstance(instance, dict):
            uuid = instance.get("uuid")
        else:
            uuid = kwargs.get("instance_uuid")
        try:
            uuid = utils.validate_uuid(uuid)
        except exception.InvalidInput:
            uuid = None
        payload_inst = {"uuid": uuid, "host": self.host, "state": None}
        if action == "create" and uuid is not None:
            name = instance.get("name") if isinstance(instance.get("name"), str) else ""
            try:
                self.db.instance_create({
                    "uuid": uuid, "name": name[:255], "host": self.host,
                    "state": states.ERROR, "task_state": None,
                    "power_state": states.POWER_NOSTATE, "flavor": {}, "image": {},
                    "networks": [], "meta": {}, "fault": message[:4000],
                    "request_id": ctx.request_id})
                payload_inst["state"] = states.ERROR
            except exception.InstanceExists:
                pass
        elif uuid is not None:
            try:
                inst = self.db.instance_update(uuid, fault=message[:4000])
                payload_inst["state"] = inst["state"]
            except exception.InstanceNotFound:
                pass
        self.notifier.instance(ctx, payload_inst, action, "error", fault=message)

    # -- spawn -------------------------------------------------------------
    def spawn(self, ctx, instance):
        inst = schema.validate_instance(instance, self.conf.network.allowed_bridges)
        fetch.check_source(inst["image"]["id"], inst["image"]["url"])
        try:
            record = self.db.instance_create({
                "uuid": inst["uuid"], "name": inst["name"], "host": self.host,
                "state": states.BUILDING, "task_state": states.SPAWNING,
                "power_state": states.POWER_NOSTATE, "flavor": inst["flavor"],
                "image": inst["image"], "networks": inst["networks"],
                "meta": inst["metadata"], "request_id": ctx.request_id,
                "config_drive": bool(inst.get("config_drive") or inst.get("user_data")),
                "user_data": inst.get("user_data")})
        except exception.InstanceExists:
            LOG.info("spawn of %s ignored: the instance already exists", inst["uuid"])
            return
        self.notifier.instance(ctx, record, "create", "start")
        self._submit(ctx, self._do_spawn, inst["uuid"])

    def _do_spawn(self, ctx, uuid):
        with _instance_lock(uuid):
            inst = self.db.instance_get(uuid)
            if inst["task_state"] != states.SPAWNING:
                return
            created_dir = False
            try:
                if self.driver.lookup(uuid) is not None:
                    raise exception.InstanceExists(uuid=uuid)
                size = inst["flavor"]["root_gb"] * GiB
                disk = self.driver.disk_path(uuid)
                # The base's lock is held until the overlay exists, so the cache
                # cleaner can never remove the base in between (LP#1256838).
                with self.image_cache.using(inst["image"]) as base:
                    if base.virtual_size > size:
                        raise exception.InvalidInput(
                            reason="image virtual size %d exceeds flavor root disk "
                                   "%d GiB" % (base.virtual_size,
                                               inst["flavor"]["root_gb"]))
                    self.driver.make_instance_dir(uuid)
                    created_dir = True
                    qemu_img.create_overlay(disk, base.path, base.disk_format, size)
                self.configdrive.at_spawn(inst)  # issue 13: disk.config, if wanted
                self.driver.define_and_start(inst)
            except Exception as e:
                LOG.warning("spawn of %s failed: %s", uuid, e)
                try:
                    if not isinstance(e, exception.InstanceExists):
                        self.driver.destroy(uuid)
                        if created_dir:
                            self.driver.remove_instance_dir(uuid)
                except Exception:
                    LOG.exception("cleanup after failed spawn of %s", uuid)
                self._set_error(ctx, uuid, "create", "spawn failed: %s" % e)
                return
            inst = self.db.instance_update(
                uuid, state=states.ACTIVE, task_state=None,
                power_state=self.driver.power_state(uuid), disk_path=disk,
                base_path=base.path, fault=None)
            LOG.info("spawned %s on %s", uuid, self.host)
            self.notifier.instance(ctx, inst, "create", "end")

    # -- power operations --------------------------------------------------
    def _power_op(self, ctx, uuid, action, allowed, task, fn, end_state):
        inst = self._get_own(uuid)
        if inst["state"] not in allowed or inst["task_state"] is not None:
            raise exception.InstanceInvalidState(
                uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                action=action, needed=" or ".join(allowed) + " with no task")
        self.db.instance_update(uuid, expected_task_state=[None], task_state=task)
        self.notifier.instance(ctx, inst, action, "start")

        def run(ctx, uuid):
            with _instance_lock(uuid):
                try:
                    fn(uuid)
                except Exception as e:
                    self.db.instance_update(uuid, task_state=None,
                                            power_state=self.driver.power_state(uuid))
                    self.notifier.instance(ctx, self.db.instance_get(uuid), action,
                                           "error", fault=str(e))
                    return
                inst = self.db.instance_update(
                    uuid, state=end_state, task_state=None, fault=None,
                    power_state=self.driver.power_state(uuid))
                self.notifier.instance(ctx, inst, action, "end")
        self._submit(ctx, run, uuid)

    def stop(self, ctx, uuid):
        self._power_op(ctx, uuid, "power_off", (states.ACTIVE, states.STOPPED),
                       states.POWERING_OFF, self.driver.power_off, states.STOPPED)

    def start(self, ctx, uuid):
        self._power_op(ctx, uuid, "power_on", (states.STOPPED, states.ACTIVE),
                       states.POWERING_ON, self.driver.power_on, states.ACTIVE)

    def reboot(self, ctx, uuid):
        self._power_op(ctx, uuid, "reboot", (states.ACTIVE, states.STOPPED),
                       states.REBOOTING, self.driver.reboot, states.ACTIVE)

    # -- delete ------------------------------------------------------------
    def delete(self, ctx, uuid):
        """Delete; an instance in RESIZE_VERIFY has its resize confirmed first (the
        source's set-aside copy is removed too, and auto-confirm has nothing left)."""
        inst = self._get_own(uuid)
        if inst["task_state"] not in (None, states.DELETING, states.SPAWNING):
            raise exception.InstanceInvalidState(
                uuid=uuid, state="%s/%s" % (inst["state"], inst["task_state"]),
                action="delete", needed="no task in progress")
        self.db.instance_update(uuid, task_state=states.DELETING)
        self.notifier.instance(ctx, inst, "delete", "start")
        self._submit(ctx, self._do_delete, uuid)

    def _do_delete(self, ctx, uuid):
        with _instance_lock(uuid):
            try:
                inst = self.db.instance_get(uuid)
            except exception.InstanceNotFound:
                return
            try:
                if inst["state"] == states.RESIZE_VERIFY:
                    self.resize.confirm_before_delete(ctx, uuid)
                self.driver.destroy(uuid)
                self.driver.remove_instance_dir(uuid)
            except Exception as e:
                self._set_error(ctx, uuid, "delete", "delete failed: %s" % e)
                return
            self.db.instance_destroy(uuid)
            inst["state"] = states.DELETED
            inst["task_state"] = None
            self.notifier.instance(ctx, inst, "delete", "end")

    # -- fixed IPs ---------------------------------------------------------
    def _change_ip(self, ctx, uuid, network_id, address, add):
        action = "add_fixed_ip" if add else "remove_fixed_ip"
        inst = self._get_own(uuid)
        nets = inst["networks"]
        idx = next((i for i, n in enumerate(nets) if n["id"] == network_id), None)
        if idx is None:
            raise exception.InvalidInput(
                reason="instance %s has no network %r" % (uuid, str(network_id)[:64]))

        def run(ctx, uuid):
            with _instance_lock(uuid):
                inst = self.db.instance_get(uuid)
                nets = [dict(n) for n in inst["networks"]]
                vif = nets[idx]
                ips = list(vif["fixed_ips"])
                if add and address not in ips:
                    ips.append(address)
                elif not add and address in ips:
                    ips.remove(address)
                else:
                    LOG.info("%s %s on %s: nothing to do", action, address, uuid)
                    self.notifier.instance(ctx, inst, action, "end", address=address)
                    return
                vif["fixed_ips"] = ips
                try:
                    if self.driver.lookup(uuid) is not None:
                        self.driver.update_interface(uuid, vif)
                    self.configdrive.after_network_change(dict(inst, networks=nets))
                except Exception as e:
                    LOG.warning("%s %s on %s failed: %s", action, address, uuid, e)
                    self.db.instance_update(uuid, fault="%s failed: %s" % (action, e))
                    self.notifier.instance(ctx, inst, action, "error", fault=str(e))
                    return
                inst = self.db.instance_update(uuid, networks=nets)
                LOG.info("%s %s on %s: done, fixed IPs now %s", action, address, uuid,
                         ", ".join(ips))
                self.notifier.instance(ctx, inst, action, "end", address=address)
        self._submit(ctx, run, uuid)

    def add_fixed_ip(self, ctx, uuid, network_id, address):
        self._change_ip(ctx, uuid, network_id, address, add=True)

    def remove_fixed_ip(self, ctx, uuid, network_id, address):
        self._change_ip(ctx, uuid, network_id, address, add=False)

    # -- queries -----------------------------------------------------------
    def _disk_facts(self, inst):
        disk = {"path": inst.get("disk_path"), "backing_file": None,
                "backing_format": None, "virtual_size": None}
        if inst.get("disk_path") and os.path.exists(inst["disk_path"]):
            try:
                info = qemu_img.info(inst["disk_path"], "qcow2")
                disk["backing_file"] = info.get("full-backing-filename") or \
                    info.get("backing-filename")
                disk["backing_format"] = info.get("backing-filename-format")
                disk["virtual_size"] = info.get("virtual-size")
            except Exception as e:
                disk["error"] = str(e)[:500]
        return disk

    def _view(self, inst, disk=True):
        out = {k: inst[k] for k in ("uuid", "name", "host", "state", "task_state",
                                    "power_state", "flavor", "networks", "fault",
                                    "metadata")}
        out["config_drive"] = bool(inst.get("config_drive"))
        out["image_id"] = inst["image"].get("id") if inst.get("image") else None
        out["created_at"] = inst["created_at"].isoformat() if inst.get("created_at") else None
        out["disk"] = self._disk_facts(inst) if disk else {"path": inst.get("disk_path")}
        return out

    def get_instance(self, ctx, uuid):
        return self._view(self._get_own(uuid))

    def list_instances(self, ctx):
        return [self._view(i, disk=False) for i in self.db.instance_get_all(host=self.host)]

    def get_host_status(self, ctx):
        insts = self.db.instance_get_all(host=self.host)
        status = {"host": self.host, "libvirt_connected": self.driver.host.connected,
                  "libvirt_reconnects": self.driver.host.reconnects,
                  "instances": len(insts),
                  "free_disk_gb": self.driver.free_disk_gb()}
        used_mb = sum(i["flavor"].get("memory_mb", 0) for i in insts
                      if i["state"] != states.ERROR)
        used_vcpus = sum(i["flavor"].get("vcpus", 0) for i in insts
                         if i["state"] != states.ERROR)
        try:
            stats = self.driver.host.host_stats()
            status.update(memory_mb=stats["memory_mb"], vcpus=stats["vcpus"],
                          free_memory_mb=stats["free_memory_mb"],
                          free_ram_mb=stats["memory_mb"] - used_mb,
                          vcpus_used=used_vcpus)
        except exception.HypervisorUnavailable:
            pass
        return status

    # -- reality -----------------------------------------------------------
    def handle_lifecycle_event(self, uuid, event, detail):
        """Called from libvirt's event thread: only queue the sync."""
        self.pool.submit(self._sync_one_safe, uuid)

    def _sync_one_safe(self, uuid):
        try:
            self.sync_instance_power(uuid)
        except Exception:
            LOG.exception("power sync of %s failed", uuid)

    def sync_instance_power(self, uuid):
        try:
            inst = self.db.instance_get(uuid)
        except exception.InstanceNotFound:
            return
        if inst["host"] != self.host or inst["task_state"] is not None:
            return
        if inst["state"] not in (states.ACTIVE, states.STOPPED):
            return
        dom = self.driver.lookup(uuid)
        power = vguest.power_state(dom)
        values = {}
        if power != inst["power_state"]:
            values["power_state"] = power
        if dom is None:
            values.update(state=states.ERROR,
                          fault="libvirt domain disappeared behind the agent's back")
        elif power == states.POWER_RUNNING and inst["state"] == states.STOPPED:
            values["state"] = states.ACTIVE
        elif power in (states.POWER_SHUTDOWN, states.POWER_CRASHED) and \
                inst["state"] == states.ACTIVE:
            values["state"] = states.STOPPED
        if values:
            # re-check under the instance lock: an operation may have started
            with _instance_lock(uuid):
                cur = self.db.instance_get(uuid)
                if cur["task_state"] is None and cur["state"] == inst["state"]:
                    LOG.info("power sync %s: %s", uuid, values)
                    self.db.instance_update(uuid, **values)

    def sync_power_states(self):
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            if not self.driver.host.connected:
                return
            for inst in self.db.instance_get_all(host=self.host):
                try:
                    self.sync_instance_power(inst["uuid"])
                except exception.HypervisorUnavailable:
                    return
                except Exception:
                    LOG.exception("power sync of %s failed", inst["uuid"])
        finally:
            self._sync_lock.release()

    def bound_console_logs(self):
        """Keep every local instance's console.log within
        ``[libvirt] console_log_max_bytes`` (a periodic task)."""
        limit = self.conf.libvirt.console_log_max_bytes
        if not limit:
            return
        for inst in self.db.instance_get_all(host=self.host):
            try:
                dropped = self.driver.bound_console_log(inst["uuid"], limit)
            except Exception:
                LOG.exception("bounding the console log of %s failed", inst["uuid"])
                continue
            if dropped:
                LOG.info("console log of %s cut by %d bytes (limit %d)",
                         inst["uuid"], dropped, limit)

    def init_host(self):
        """Reconcile records with what libvirt has, after a (re)start."""
        ctx = context.new_context()
        for warning in self.driver.hypervisor_warnings():
            LOG.warning(warning)
        try:
            domains = self.driver.list_managed_domains()
        except exception.HypervisorUnavailable:
            LOG.warning("libvirt unavailable at start-up; reconciling later")
            domains = None
        records = {i["uuid"]: i for i in self.db.instance_get_all(host=self.host)}
        for uuid, inst in records.items():
            task = inst["task_state"]
            if task is None:
                continue
            LOG.info("instance %s was interrupted in task %s", uuid, task)
            if task == states.SPAWNING:
                dom_ok = domains is not None and uuid in domains
                if dom_ok:
                    self.db.instance_update(uuid, state=states.ACTIVE, task_state=None,
                                            disk_path=self.driver.disk_path(uuid))
                else:
                    # the cast was acknowledged before dispatch: it will not come again
                    self._submit(ctx, self._resume_spawn, uuid)
            elif task == states.DELETING:
                self._submit(ctx, self._do_delete, uuid)
            elif task in (states.POWERING_OFF, states.POWERING_ON, states.REBOOTING,
                          states.UPDATING_NETWORK):
                self.db.instance_update(uuid, task_state=None)
        self.live.recover()
        resizing = self.resize.in_flight_uuids()
        self.resize.recover()
        self.precache.recover()
        if domains is not None:
            for uuid, facts in domains.items():
                if uuid in records or uuid in resizing:
                    continue
                meta = facts["instance"]
                if meta.get("owner_host") not in (None, "", self.host):
                    continue
                LOG.warning("rebuilding the record of %s from its domain metadata", uuid)
                self.db.instance_create({
                    "uuid": uuid, "name": meta["name"] or "", "host": self.host,
                    "state": (states.ACTIVE if facts["power_state"] == states.POWER_RUNNING
                              else states.STOPPED),
                    "task_state": None, "power_state": facts["power_state"],
                    "flavor": meta["flavor"], "image": meta["image"],
                    "networks": meta["networks"], "meta": meta["metadata"],
                    "disk_path": facts["disk_path"]})
        self.sync_power_states()

    def _resume_spawn(self, ctx, uuid):
        """An interrupted spawn with no domain: start it over from scratch -- but
        its directory goes only once libvirtd says no domain uses it (libvirtd may
        have been down when init_host looked)."""
        with _instance_lock(uuid):
            try:
                if self.driver.host.wait_connected(600) and \
                        self.driver.lookup(uuid) is not None:
                    LOG.info("interrupted spawn of %s has its domain: kept", uuid)
                    self.db.instance_update(uuid, state=states.ACTIVE, task_state=None,
                                            disk_path=self.driver.disk_path(uuid))
                    self.sync_instance_power(uuid)
                    return
                self.driver.remove_instance_dir(uuid)
            except Exception:
                LOG.exception("cleanup of interrupted spawn %s; left for the next "
                              "start", uuid)
                return
        self._do_spawn(ctx, uuid)

    def cleanup_image_cache(self):
        if not self.conf.image_cache.remove_unused_base_images:
            return []
        removed = self.image_cache.clean()
        if removed:
            LOG.info("image cache: removed %s", removed)
        return removed
