"""Server side of the RPC API: validates every payload at the edge, then hands
the work to the manager. Casts never raise into oslo.messaging (a bad payload is
reported as an error notification and, where the uuid is valid, an ERROR
instance); calls raise documented exceptions that reach the caller."""
import functools
import logging

import oslo_messaging as messaging

from computeagent import context
from computeagent import exception
from computeagent.rpc import api
from computeagent.rpc import schema

LOG = logging.getLogger(__name__)

_EXPECTED = (exception.InstanceNotFound, exception.MigrationNotFound,
             exception.InvalidInput, exception.InstanceInvalidState,
             exception.MigrationError, exception.BackingChainInvalid,
             exception.ImageDownloadFailed, exception.ImageUnacceptable)


def _cast(action):
    """Wrap a cast handler: context, validation errors -> notification, and no
    exception ever escapes into the executor."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, ctxt, **kwargs):
            ctx = context.from_rpc(ctxt)
            try:
                return fn(self, ctx, **kwargs)
            except exception.ComputeAgentError as e:
                LOG.warning("%s refused: %s", action, e)
                self.manager.report_cast_error(ctx, action, kwargs, str(e))
            except TypeError as e:
                # wrong or missing arguments in the message itself
                LOG.warning("%s: malformed message: %s", action, e)
                self.manager.report_cast_error(ctx, action, kwargs,
                                               "malformed message: %s" % e)
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
        try:
            return fn(self, ctx, **kwargs)
        except TypeError as e:
            raise exception.InvalidInput(reason="malformed message: %s" % e)
    return wrapper


class ComputeAgentEndpoint:
    target = messaging.Target(version=api.RPC_API_VERSION)

    def __init__(self, manager):
        self.manager = manager

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
        self.manager.reboot(ctx, schema.uuid_of(instance_uuid))

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
    def pre_live_migration(self, ctx, instance, migration, disk_info):
        if not all(isinstance(x, dict) for x in (instance, migration, disk_info)):
            raise exception.InvalidInput(reason="instance, migration and disk_info "
                                                "must be objects")
        return self.manager.live.pre_live_migration(ctx, instance, migration, disk_info)

    @_call
    def post_live_migration_at_destination(self, ctx, instance_uuid, migration_id,
                                           disk_info):
        return self.manager.live.post_live_migration_at_destination(
            ctx, instance_uuid, migration_id, disk_info)

    @_call
    def rollback_live_migration_at_destination(self, ctx, instance_uuid, migration_id):
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
    def prep_resize(self, ctx, instance, migration, disk_info):
        _objects(instance, migration, disk_info)
        return self.manager.resize.prep_resize(ctx, instance, migration, disk_info)

    @_call
    def finish_resize(self, ctx, instance, migration, disk_info):
        _objects(instance, migration, disk_info)
        return self.manager.resize.finish_resize(ctx, instance, migration, disk_info)

    @_call
    def resize_rollback_at_dest(self, ctx, instance_uuid, migration_id):
        return self.manager.resize.resize_rollback_at_dest(ctx, instance_uuid,
                                                           migration_id)

    @_call
    def confirm_resize_at_source(self, ctx, instance_uuid, migration_id):
        return self.manager.resize.confirm_resize_at_source(ctx, instance_uuid,
                                                            migration_id)

    @_call
    def finish_revert_resize(self, ctx, instance_uuid, migration_id):
        return self.manager.resize.finish_revert_resize(ctx, instance_uuid,
                                                        migration_id)


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
