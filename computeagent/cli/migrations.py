"""Migration commands: live-migrate, migration-show, migration-list, migration-abort,
resize, confirm, revert.  ``--wait`` shows progress (percent, MiB, rate, ETA) on
stderr and exits 1 unless the migration reached the wanted end."""
import uuid as uuidlib

from computeagent import exception
from computeagent.cli import base

MIGRATION_COLUMNS = ("id", "kind", "instance_uuid", "source", "dest", "status",
                     "progress", "downtime_ms")


def get_or_none(cmd, mid, host=None):
    try:
        return cmd.conn.rpc(host or cmd.host, cmd.conn.api.get_migration, cmd.ctxt,
                            host or cmd.host, mid)
    except exception.MigrationNotFound:
        return None


def wait_migration(cmd, a, mid, ends, what):
    return base.Waiter(cmd, a, lambda: get_or_none(cmd, mid),
                       lambda m: m["status"] in ends, what,
                       progress=base.progress_for(cmd)).wait()


class LiveMigrate(base.ShowCommand):
    """Live block migration of an instance to another host (cast to its host)."""

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")
        p.add_argument("dest", help="destination host")
        p.add_argument("--migration-id",
                       help="idempotency key: the same id twice is one migration "
                            "(default: a new UUID)")
        base.add_wait_arguments(p, "the migration ends (exit 0 only if completed)")

    def record(self, a):
        mid = a.migration_id or str(uuidlib.uuid4())
        self.call("get_instance", a.uuid)
        self.call("live_migrate", a.uuid, a.dest, mid)
        if not a.wait:
            return {"migration_id": mid, "request_id": self.ctxt["request_id"],
                    "sent": "live-migrate"}
        mig = wait_migration(self, a, mid, ("completed", "failed", "cancelled"),
                             "migration %s" % mid)
        if mig["status"] != "completed":
            self.fail_after_output("migration %s %s: %s" % (mid, mig["status"],
                                                            mig.get("error")))
        return mig


class Resize(base.ShowCommand):
    """Resize or cold-migrate an instance (dest may be its own host)."""

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")
        p.add_argument("dest", help="destination host (the same host: resize in place)")
        p.add_argument("--vcpus", type=int, required=True, help="new virtual CPUs")
        p.add_argument("--memory-mb", type=int, required=True, help="new memory in MiB")
        p.add_argument("--root-gb", type=int, required=True,
                       help="new root disk size in GiB (not smaller)")
        p.add_argument("--flavor-name", default="custom", help="new flavor name")
        p.add_argument("--migration-id", help="idempotency key (default: a new UUID)")
        base.add_wait_arguments(p, "the resize waits for confirm/revert "
                                   "(verify-resize; exit 1 if failed)")

    def record(self, a):
        mid = a.migration_id or str(uuidlib.uuid4())
        flavor = {"name": a.flavor_name, "vcpus": a.vcpus, "memory_mb": a.memory_mb,
                  "root_gb": a.root_gb}
        self.call("get_instance", a.uuid)
        self.call("resize", a.uuid, a.dest, flavor, mid)
        if not a.wait:
            return {"migration_id": mid, "request_id": self.ctxt["request_id"],
                    "sent": "resize"}
        mig = wait_migration(self, a, mid, ("verify-resize", "failed"),
                             "resize %s" % mid)
        if mig["status"] != "verify-resize":
            self.fail_after_output("resize %s failed: %s" % (mid, mig.get("error")))
        return mig


class _Finish(base.ShowCommand):
    action = ""
    end = ""

    def add_arguments(self, p):
        p.add_argument("uuid", help="instance UUID")
        p.add_argument("migration_id", help="the resize's migration id")
        base.add_wait_arguments(p, "the migration is %s (exit 1 otherwise)" % self.end)

    def record(self, a):
        self.call("get_migration", a.migration_id)     # MigrationNotFound: exit 1
        self.call("confirm_resize" if self.action == "confirm" else "revert_resize",
                  a.uuid, a.migration_id)
        if not a.wait:
            return {"migration_id": a.migration_id, "request_id": self.ctxt["request_id"],
                    "sent": self.action}
        mig = wait_migration(self, a, a.migration_id, (self.end, "failed"),
                             "%s of %s" % (self.action, a.migration_id))
        if mig["status"] != self.end:
            self.fail_after_output("%s of %s: %s" % (self.action, a.migration_id,
                                                     mig["status"]))
        return mig


class Confirm(_Finish):
    """Confirm a resize (on the host that runs the instance now)."""
    action, end = "confirm", "confirmed"


class Revert(_Finish):
    """Revert a resize (on the host that runs the instance now)."""
    action, end = "revert", "reverted"


class MigrationShow(base.ShowCommand):
    """Show one migration as this host records it."""

    def add_arguments(self, p):
        p.add_argument("migration_id", help="migration id")

    def record(self, a):
        return self.call("get_migration", a.migration_id)


class MigrationList(base.ListCommand):
    """List the migrations a host recorded (as source or destination)."""

    COLUMNS = MIGRATION_COLUMNS

    def rows(self, a):
        return self.call("list_migrations")


class MigrationAbort(base.ShowCommand):
    """Abort a queued or running live migration (cast to the source host)."""

    def add_arguments(self, p):
        p.add_argument("migration_id", help="migration id")

    def record(self, a):
        self.call("get_migration", a.migration_id)
        self.call("abort_migration", a.migration_id)
        return {"migration_id": a.migration_id, "request_id": self.ctxt["request_id"],
                "sent": "abort"}


COMMANDS = {
    "live-migrate": LiveMigrate, "migration-show": MigrationShow,
    "migration-list": MigrationList, "migration-abort": MigrationAbort,
    "resize": Resize, "confirm": Confirm, "revert": Revert,
}
