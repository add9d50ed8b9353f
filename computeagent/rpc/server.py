"""Server side of the RPC API: validates every payload at the edge, then hands
the work to the manager. Casts never raise into oslo.messaging (a bad payload is
reported as an error notification and, where the uuid is valid, an ERROR
instance); calls raise documented exceptions that reach the caller."""
import functools
import inspect
import logging

import oslo_messaging as messaging

from computeagent import context
from computeagent import exception
from computeagent.compute import idempotency
from computeagent.compute import peer as peer_rules
from computeagent.rpc import api
from computeagent.rpc import schema

LOG = logging.getLogger(__name__)

_EXPECTED = (exception.InstanceNotFound, exception.MigrationNotFound,
             exception.PeerRefused, exception.InvalidTransition,
             exception.InvalidInput, exception.InstanceInvalidState,
             exception.MigrationError, exception.BackingChainInvalid,
             exception.ImageDownloadFailed, exception.ImageUnacceptable)


def _malformed(fn, ctx, kwargs):
    """Why the message's arguments do not fit the handler, or None.  Only this is
    "malformed": a TypeError raised deeper down is a bug and is reported as one."""
    try:
        inspect.signature(fn).bind(None, ctx, **kwargs)
    except TypeError as e:
        return "malformed message: %s" % e
    return None


def _cast(action):
    """Wrap a cast handler: context, validation errors -> notification, and no
    exception ever escapes into the executor."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, ctxt, **kwargs):
            ctx = context.from_rpc(ctxt)
            bad = _malformed(fn, ctx, kwargs)
            if bad:
                LOG.warning("%s: %s", action, bad)
                self.manager.report_cast_error(ctx, action, kwargs, bad)
                return None
            try:
                return fn(self, ctx, **kwargs)
            except exception.ComputeAgentError as e:
                LOG.warning("%s refused: %s", action, e)
                self.manager.report_cast_error(ctx, action, kwargs, str(e))
            except Exception as e:
                LOG.exception("%s failed", action)
                self.manager.report_cast_error(ctx, action, kwargs, str(e))
        return wrapper
    return deco


def _call(fn):
    @functools.wraps(fn)
    @messaging.expected_exceptions(*_EXPECTED)
    def wrapper(self, ctxt, **kwargs):
        ctx = context.from_rpc(ctxt)
        bad = _malformed(fn, ctx, kwargs)
        if bad:
            raise exception.InvalidInput(reason=bad)
        try:
            return fn(self, ctx, **kwargs)
        except exception.ComputeAgentError:
            raise
        except Exception:
            LOG.exception("%s failed", fn.__name__)
            raise
    return wrapper


class ComputeAgentEndpoint:
    target = messaging.Target(version=api.RPC_API_VERSION)

    def __init__(self, manager):
        self.manager = manager

    def _peer_check(self, method, peer, instance_uuid, migration_id, payload=None):
        """Agent-to-agent calls: refuse what does not match our record (1.3)."""
        try:
            return peer_rules.check(self.manager.db, self.manager.host, method, peer,
                                    instance_uuid, migration_id, payload)
        except exception.PeerRefused as e:
            LOG.warning("%s", e)
            raise

    # -- casts -------------------------------------------------------------
    @_cast("create")
    def spawn(self, ctx, instance):
        self.manager.spawn(ctx, instance)

    @_cast("power_off")
    def stop(self, ctx, instance_uuid):
        self.manager.stop(ctx, schema.uuid_of(instance_uuid))

    @_cast("power_on")
    def start(self, ctx, instance_uuid):
        self.manager.start(ctx, schema.uuid_of(instance_uuid))

    @_cast("reboot")
    def reboot(self, ctx, instance_uuid):
        uuid = schema.uuid_of(instance_uuid)
        if not idempotency.once(idempotency.REBOOTS, (uuid, ctx.request_id),
                                self.manager.reboot, ctx, uuid):
            LOG.info("reboot of %s: request %s already accepted, a repeat changes "
                     "nothing", uuid, ctx.request_id)

    @_cast("delete")
    def delete(self, ctx, instance_uuid):
        self.manager.delete(ctx, schema.uuid_of(instance_uuid))

    @_cast("add_fixed_ip")
    def add_fixed_ip(self, ctx, instance_uuid, network_id, address):
        self.manager.add_fixed_ip(ctx, schema.uuid_of(instance_uuid), network_id,
                                  schema.validate_ip(address))

    @_cast("remove_fixed_ip")
    def remove_fixed_ip(self, ctx, instance_uuid, network_id, address):
        self.manager.remove_fixed_ip(ctx, schema.uuid_of(instance_uuid), network_id,
                                     schema.validate_ip(address))

    # -- calls -------------------------------------------------------------
    @_call
    def get_instance(self, ctx, instance_uuid):
        return self.manager.get_instance(ctx, schema.uuid_of(instance_uuid))

    @_call
    def list_instances(self, ctx):
        return self.manager.list_instances(ctx)

    @_call
    def get_host_status(self, ctx):
        return self.manager.get_host_status(ctx)


    # -- 1.1 live migration ----------------------------------------------------
    @_cast("live_migration")
    def live_migrate(self, ctx, instance_uuid, dest_host, migration_id,
                     block_migration=True):
        self.manager.live.live_migrate(ctx, instance_uuid, dest_host, migration_id,
                                       block_migration)

    @_cast("live_migration_abort")
    def abort_migration(self, ctx, migration_id):
        self.manager.live.abort_migration(ctx, migration_id)

    @_call
    def get_migration(self, ctx, migration_id):
        return self.manager.live.get_migration(ctx, migration_id)

    @_call
    def list_migrations(self, ctx):
        return self.manager.live.list_migrations(ctx)

    @_call
    def pre_live_migration(self, ctx, instance, migration, disk_info, peer=None):
        _objects(instance, migration, disk_info)
        self._peer_check("pre_live_migration", peer, instance.get("uuid"),
                         migration.get("id"), payload=migration)
        return self.manager.live.pre_live_migration(ctx, instance, migration, disk_info)

    @_call
    def post_live_migration_at_destination(self, ctx, instance_uuid, migration_id,
                                           disk_info, peer=None):
        self._peer_check("post_live_migration_at_destination", peer, instance_uuid,
                         migration_id)
        return self.manager.live.post_live_migration_at_destination(
            ctx, instance_uuid, migration_id, disk_info)

    @_call
    def rollback_live_migration_at_destination(self, ctx, instance_uuid, migration_id,
                                               peer=None):
        self._peer_check("rollback_live_migration_at_destination", peer, instance_uuid,
                         migration_id)
        return self.manager.live.rollback_live_migration_at_destination(
            ctx, instance_uuid, migration_id)


    # -- 1.2 resize --------------------------------------------------------------
    @_cast("resize")
    def resize(self, ctx, instance_uuid, dest_host, flavor, migration_id):
        self.manager.resize.resize(ctx, instance_uuid, dest_host, flavor, migration_id)

    @_cast("resize_confirm")
    def confirm_resize(self, ctx, instance_uuid, migration_id):
        self.manager.resize.confirm_resize(ctx, instance_uuid, migration_id)

    @_cast("resize_revert")
    def revert_resize(self, ctx, instance_uuid, migration_id):
        self.manager.resize.revert_resize(ctx, instance_uuid, migration_id)

    @_call
    def prep_resize(self, ctx, instance, migration, disk_info, peer=None):
        _objects(instance, migration, disk_info)
        self._peer_check("prep_resize", peer, instance.get("uuid"), migration.get("id"),
                         payload=migration)
        return self.manager.resize.prep_resize(ctx, instance, migration, disk_info)

    @_call
    def finish_resize(self, ctx, instance, migration, disk_info, peer=None):
        _objects(instance, migration, disk_info)
        self._peer_check("finish_resize", peer, instance.get("uuid"), migration.get("id"))
        return self.manager.resize.finish_resize(ctx, instance, migration, disk_info)

    @_call
    def resize_rollback_at_dest(self, ctx, instance_uuid, migration_id, peer=None):
        self._peer_check("resize_rollback_at_dest", peer, instance_uuid, migration_id)
        return self.manager.resize.resize_rollback_at_dest(ctx, instance_uuid,
                                                           migration_id)

    @_call
    def confirm_resize_at_source(self, ctx, instance_uuid, migration_id, peer=None):
        self._peer_check("confirm_resize_at_source", peer, instance_uuid, migration_id)
        return self.manager.resize.confirm_resize_at_source(ctx, instance_uuid,
                                                            migration_id)

    @_call
    def finish_revert_resize(self, ctx, instance_uuid, migration_id, peer=None):
        self._peer_check("finish_revert_resize", peer, instance_uuid, migration_id)
        return self.manager.resize.finish_revert_resize(ctx, instance_uuid,
                                                        migration_id)


    # -- 1.5 image pre-caching ------------------------------------------------
    @_cast("cache_images")
    def cache_images(self, ctx, images, pin_until=None, peers=None):
        images, pin = schema.validate_cache_images(images, pin_until)
        peers = schema.host_names(peers, "peers")
        self.manager.precache.cache_images(ctx, images, pin, peers)

    @_call
    def get_image_cache(self, ctx):
        return self.manager.precache.get_image_cache(ctx)


def _objects(*values):
    if not all(isinstance(x, dict) for x in values):
        raise exception.InvalidInput(reason="arguments must be objects")


def get_server(transport, conf, manager):
    target = messaging.Target(topic=conf.rpc_topic, server=conf.host)
    endpoints = [ComputeAgentEndpoint(manager)]
    # No executor argument: oslo.messaging picks its threading executor.
    return messaging.get_rpc_server(
        transport, target, endpoints,
        access_policy=messaging.DefaultRPCAccessPolicy)
