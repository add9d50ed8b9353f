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
* 1.3 - Agent-to-agent calls prove their context: every one carries
  ``peer={"host", "role"}`` (the caller's host and its role in the migration), and
  the receiver refuses (PeerRefused) a call that does not match its own record of
  the migration (uuid, source, destination, status).  Resize statuses gain
  ``confirming`` and ``reverting`` (confirm and revert exclude each other).
  ``get_migration`` no longer returns the internal ``extra``.
* 1.4 - Config drive: the spawn payload may carry ``config_drive`` (bool),
  ``user_data`` (base64, at most 65535 bytes decoded) and per-network ``subnets``
  ([{"cidr", "gateway"}]); metadata keys must be identifiers and values printable.
* 1.5 - Image pre-caching: cast cache_images(images, pin_until, peers); call
  get_image_cache.
"""
import oslo_messaging as messaging

from computeagent.compute import peer as peer_rules
from computeagent.conf import CONF

RPC_API_VERSION = "1.5"
ALLOWED_EXMODS = ["computeagent.exception"]


def get_transport(conf=None, url=None):
    """An RPC transport whose errors from ``computeagent.exception`` reach the
    caller as those classes (InstanceNotFound, InvalidInput, ...)."""
    return messaging.get_rpc_transport(conf or CONF, url=url,
                                       allowed_remote_exmods=ALLOWED_EXMODS)


class ComputeAgentAPI:
    """``own_host``: set by an agent (the name it serves under); its agent-to-agent
    calls then carry ``peer`` (RPC 1.3).  A scheduler leaves it out."""

    def __init__(self, transport, topic=None, timeout=None, version_cap=None,
                 own_host=None):
        self.own_host = own_host
        self.topic = topic or CONF.rpc_topic
        target = messaging.Target(topic=self.topic, version="1.0")
        self.client = messaging.get_rpc_client(
            transport, target, version_cap=version_cap or RPC_API_VERSION,
            timeout=timeout)

    def _peer(self, method):
        if self.own_host is None:
            raise ValueError("agent-to-agent calls need ComputeAgentAPI(own_host=...)")
        return {"host": self.own_host, "role": peer_rules.CALLER_ROLE[method]}

    def _peer_call(self, ctxt, host, method, timeout, **kwargs):
        """An agent-to-agent call (1.3): carries this agent's ``peer`` context."""
        return self._prepare(host, "1.3", timeout).call(
            ctxt, method, peer=self._peer(method), **kwargs)

    def _prepare(self, host, version="1.0", timeout=None):
        kw = {"server": host, "version": version}
        if timeout is not None:
            kw["timeout"] = timeout
        return self.client.prepare(**kw)

    # -- 1.0 casts ---------------------------------------------------------
    def spawn(self, ctxt, host, instance):
        new = isinstance(instance, dict) and (
            "config_drive" in instance or "user_data" in instance or
            any(isinstance(n, dict) and "subnets" in n
                for n in instance.get("networks") or []))
        self._prepare(host, "1.4" if new else "1.0").cast(ctxt, "spawn",
                                                          instance=instance)

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
        return self._peer_call(ctxt, host, "pre_live_migration", timeout,
            instance=instance, migration=migration,
            disk_info=disk_info)

    def post_live_migration_at_destination(self, ctxt, host, instance_uuid,
                                           migration_id, disk_info, timeout=None):
        return self._peer_call(ctxt, host, "post_live_migration_at_destination", timeout,
            instance_uuid=instance_uuid,
            migration_id=migration_id, disk_info=disk_info)

    def rollback_live_migration_at_destination(self, ctxt, host, instance_uuid,
                                               migration_id, timeout=None):
        return self._peer_call(ctxt, host, "rollback_live_migration_at_destination", timeout,
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
        return self._peer_call(ctxt, host, "prep_resize", timeout,
            instance=instance, migration=migration,
            disk_info=disk_info)

    def finish_resize(self, ctxt, host, instance, migration, disk_info, timeout=None):
        return self._peer_call(ctxt, host, "finish_resize", timeout,
            instance=instance, migration=migration,
            disk_info=disk_info)

    def resize_rollback_at_dest(self, ctxt, host, instance_uuid, migration_id,
                                timeout=None):
        return self._peer_call(ctxt, host, "resize_rollback_at_dest", timeout,
            instance_uuid=instance_uuid,
            migration_id=migration_id)

    def confirm_resize_at_source(self, ctxt, host, instance_uuid, migration_id,
                                 timeout=None):
        return self._peer_call(ctxt, host, "confirm_resize_at_source", timeout,
            instance_uuid=instance_uuid,
            migration_id=migration_id)

    def finish_revert_resize(self, ctxt, host, instance_uuid, migration_id,
                             timeout=None):
        return self._peer_call(ctxt, host, "finish_revert_resize", timeout,
            instance_uuid=instance_uuid,
            migration_id=migration_id)

    # -- 1.5 image pre-caching ------------------------------------------------
    def cache_images(self, ctxt, host, images, pin_until=None, peers=None):
        """Cast: fetch ``images`` (image dicts as in spawn) into ``host``'s cache.
        ``pin_until`` ("YYYY-MM-DDTHH:MM:SSZ", UTC) keeps the bases from aging
        out until then; ``peers`` are hypervisors to fetch a base from (over
        libvirt, same checks) when the image source fails. Progress and
        results: ``get_image_cache``."""
        kw = {"images": images, "pin_until": pin_until}
        if peers:
            kw["peers"] = peers
        self._prepare(host, "1.5").cast(ctxt, "cache_images", **kw)

    def get_image_cache(self, ctxt, host, timeout=None):
        """Call: one dict per image of ``host``'s cache (docs/rpc-api.md)."""
        return self._prepare(host, "1.5", timeout).call(ctxt, "get_image_cache")
