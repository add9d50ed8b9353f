"""Client side of the computeagent RPC API: what a scheduler imports.

    from computeagent.rpc import api
    transport = api.get_transport(cfg.CONF, "rabbit://user:pw@broker:5672/")
    agent = api.ComputeAgentAPI(transport)
    agent.spawn({"request_id": "req-1"}, "hosta", instance)
    agent.get_instance({}, "hosta", uuid)          # raises InstanceNotFound

API version history (bump the minor version for every addition; 1.x callers keep
working, and the server accepts every 1.x message up to its own version):

* 1.0 - Initial version: casts spawn, stop, start, reboot, delete, add_fixed_ip,
  remove_fixed_ip; calls get_instance, list_instances, get_host_status.
* 1.1 - Live block migration: cast live_migrate, abort_migration; calls
  get_migration, list_migrations; agent-to-agent calls pre_live_migration,
  post_live_migration_at_destination, rollback_live_migration_at_destination.
* 1.2 - Resize and cold migration: casts resize, confirm_resize, revert_resize;
  agent-to-agent calls prep_resize, finish_resize, resize_rollback_at_dest,
  confirm_resize_at_source, finish_revert_resize.
"""
import oslo_messaging as messaging

from computeagent.conf import CONF

RPC_API_VERSION = "1.2"
ALLOWED_EXMODS = ["computeagent.exception"]


def get_transport(conf=None, url=None):
    """An RPC transport whose errors from ``computeagent.exception`` reach the
    caller as those classes (InstanceNotFound, InvalidInput, ...)."""
    return messaging.get_rpc_transport(conf or CONF, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


class ComputeAgentAPI:
    def __init__(self, transport, topic=None, timeout=None, version_cap=None):
        self.topic = topic or CONF.rpc_topic
        target = messaging.Target(topic=self.topic, version="1.0")
        self.client = messaging.get_rpc_client(
            transport, target, version_cap=version_cap or RPC_API_VERSION,
            timeout=timeout)

    def _prepare(self, host, version="1.0", timeout=None):
        kw = {"server": host, "version": version}
        if timeout is not None:
            kw["timeout"] = timeout
        return self.client.prepare(**kw)

    # -- 1.0 casts ---------------------------------------------------------
    def spawn(self, ctxt, host, instance):
        self._prepare(host).cast(ctxt, "spawn", instance=instance)

    def stop(self, ctxt, host, instance_uuid):
        self._prepare(host).cast(ctxt, "stop", instance_uuid=instance_uuid)

    def start(self, ctxt, host, instance_uuid):
        self._prepare(host).cast(ctxt, "start", instance_uuid=instance_uuid)

    def reboot(self, ctxt, host, instance_uuid):
        self._prepare(host).cast(ctxt, "reboot", instance_uuid=instance_uuid)

    def delete(self, ctxt, host, instance_uuid):
        self._prepare(host).cast(ctxt, "delete", instance_uuid=instance_uuid)

    def add_fixed_ip(self, ctxt, host, instance_uuid, network_id, address):
        self._prepare(host).cast(ctxt, "add_fixed_ip", instance_uuid=instance_uuid,
                                 network_id=network_id, address=address)

    def remove_fixed_ip(self, ctxt, host, instance_uuid, network_id, address):
        self._prepare(host).cast(ctxt, "remove_fixed_ip", instance_uuid=instance_uuid,
                                 network_id=network_id, address=address)

    # -- 1.0 calls ---------------------------------------------------------
    def get_instance(self, ctxt, host, instance_uuid, timeout=None):
        return self._prepare(host, timeout=timeout).call(
            ctxt, "get_instance", instance_uuid=instance_uuid)

    def list_instances(self, ctxt, host, timeout=None):
        return self._prepare(host, timeout=timeout).call(ctxt, "list_instances")

    def get_host_status(self, ctxt, host, timeout=None):
        return self._prepare(host, timeout=timeout).call(ctxt, "get_host_status")

    # -- 1.1 live migration ------------------------------------------------
    def live_migrate(self, ctxt, host, instance_uuid, dest_host, migration_id,
                     block_migration=True):
        """Cast to the host that runs the instance. ``migration_id`` is the
        caller's idempotency key."""
        self._prepare(host, "1.1").cast(
            ctxt, "live_migrate", instance_uuid=instance_uuid, dest_host=dest_host,
            migration_id=migration_id, block_migration=block_migration)

    def abort_migration(self, ctxt, host, migration_id):
        self._prepare(host, "1.1").cast(ctxt, "abort_migration",
                                        migration_id=migration_id)

    def get_migration(self, ctxt, host, migration_id, timeout=None):
        return self._prepare(host, "1.1", timeout).call(
            ctxt, "get_migration", migration_id=migration_id)

    def list_migrations(self, ctxt, host, timeout=None):
        return self._prepare(host, "1.1", timeout).call(ctxt, "list_migrations")

    # agent to agent
    def pre_live_migration(self, ctxt, host, instance, migration, disk_info,
                           timeout=None):
        return self._prepare(host, "1.1", timeout).call(
            ctxt, "pre_live_migration", instance=instance, migration=migration,
            disk_info=disk_info)

    def post_live_migration_at_destination(self, ctxt, host, instance_uuid,
                                           migration_id, disk_info, timeout=None):
        return self._prepare(host, "1.1", timeout).call(
            ctxt, "post_live_migration_at_destination", instance_uuid=instance_uuid,
            migration_id=migration_id, disk_info=disk_info)

    def rollback_live_migration_at_destination(self, ctxt, host, instance_uuid,
                                               migration_id, timeout=None):
        return self._prepare(host, "1.1", timeout).call(
            ctxt, "rollback_live_migration_at_destination",
            instance_uuid=instance_uuid, migration_id=migration_id)

    # -- 1.2 resize / cold migration ----------------------------------------
    def resize(self, ctxt, host, instance_uuid, dest_host, flavor, migration_id):
        """Cast to the host that runs the instance; ``dest_host`` may be that same
        host (same-host resize) or another (cold migration)."""
        self._prepare(host, "1.2").cast(
            ctxt, "resize", instance_uuid=instance_uuid, dest_host=dest_host,
            flavor=flavor, migration_id=migration_id)

    def confirm_resize(self, ctxt, host, instance_uuid, migration_id):
        """Cast to the host where the instance runs after the resize."""
        self._prepare(host, "1.2").cast(ctxt, "confirm_resize",
                                        instance_uuid=instance_uuid,
                                        migration_id=migration_id)

    def revert_resize(self, ctxt, host, instance_uuid, migration_id):
        """Cast to the host where the instance runs after the resize."""
        self._prepare(host, "1.2").cast(ctxt, "revert_resize",
                                        instance_uuid=instance_uuid,
                                        migration_id=migration_id)

    # agent to agent
    def prep_resize(self, ctxt, host, instance, migration, disk_info, timeout=None):
        return self._prepare(host, "1.2", timeout).call(
            ctxt, "prep_resize", instance=instance, migration=migration,
            disk_info=disk_info)

    def finish_resize(self, ctxt, host, instance, migration, disk_info, timeout=None):
        return self._prepare(host, "1.2", timeout).call(
            ctxt, "finish_resize", instance=instance, migration=migration,
            disk_info=disk_info)

    def resize_rollback_at_dest(self, ctxt, host, instance_uuid, migration_id,
                                timeout=None):
        return self._prepare(host, "1.2", timeout).call(
            ctxt, "resize_rollback_at_dest", instance_uuid=instance_uuid,
            migration_id=migration_id)

    def confirm_resize_at_source(self, ctxt, host, instance_uuid, migration_id,
                                 timeout=None):
        return self._prepare(host, "1.2", timeout).call(
            ctxt, "confirm_resize_at_source", instance_uuid=instance_uuid,
            migration_id=migration_id)

    def finish_revert_resize(self, ctxt, host, instance_uuid, migration_id,
                             timeout=None):
        return self._prepare(host, "1.2", timeout).call(
            ctxt, "finish_revert_resize", instance_uuid=instance_uuid,
            migration_id=migration_id)
