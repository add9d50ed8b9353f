"""Database access: one engine per process, short sessions, plain dicts out.

Records are returned as dicts so no ORM object escapes a session (threads share
nothing but the engine).
"""
import contextlib
import logging
import os
import threading

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import sessionmaker

from computeagent import exception
from computeagent.compute import states
from computeagent.db import migration
from computeagent.db import models

LOG = logging.getLogger(__name__)

class Database:
    def __init__(self, url):
        self.url = url
        kwargs = {}
        if url.startswith("sqlite"):
            path = url.split("sqlite:///", 1)[-1]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                # records hold domain XML and image URLs: owner only (issue 9)
                os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
                os.chmod(path, 0o600)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine = sa.create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(bind=self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    def sync(self):
        migration.db_sync(self.engine)

    @contextlib.contextmanager
    def session(self):
        # SQLite allows one writer; serialise writers in-process instead of
        # relying on busy timeouts.
        with self._write_lock:
            s = self._session()
            try:
                yield s
                s.commit()
            except Exception:
                s.rollback()
                raise
            finally:
                s.close()

    # -- instances ---------------------------------------------------------
    def instance_create(self, values):
        with self.session() as s:
            if s.get(models.Instance, values["uuid"]) is not None:
                raise exception.InstanceExists(uuid=values["uuid"])
            s.add(models.Instance(**values))
        return self.instance_get(values["uuid"])

    def instance_get(self, uuid):
        with self.session() as s:
            inst = s.get(models.Instance, uuid)
            if inst is None:
                raise exception.InstanceNotFound(uuid=uuid)
            return _to_dict(inst)

    def instance_get_all(self, host=None):
        with self.session() as s:
            q = sa.select(models.Instance)
            if host is not None:
                q = q.where(models.Instance.host == host)
            return [_to_dict(i) for i in s.scalars(q.order_by(models.Instance.created_at))]

    def instance_update(self, uuid, expected_task_state=None, **values):
        """Update an instance; with ``expected_task_state`` the update is a
        compare-and-swap on the task state (raises InstanceInvalidState)."""
        with self.session() as s:
            inst = s.get(models.Instance, uuid)
            if inst is None:
                raise exception.InstanceNotFound(uuid=uuid)
            if expected_task_state is not None:
                allowed = expected_task_state
                if not isinstance(allowed, (list, tuple)):
                    allowed = (allowed,)
                if inst.task_state not in allowed:
                    raise exception.InstanceInvalidState(
                        uuid=uuid, state="%s/%s" % (inst.state, inst.task_state),
                        action="update", needed="task state %s" % (allowed,))
            for k, v in values.items():
                setattr(inst, k, v)
            s.flush()
            return _to_dict(inst)

    def instance_destroy(self, uuid):
        with self.session() as s:
            inst = s.get(models.Instance, uuid)
            if inst is not None:
                s.delete(inst)

    # -- migrations --------------------------------------------------------
    def migration_create(self, values):
        """Create a migration record; None if one with that id exists (a duplicate).
        Its first status must be one the kind's state machine allows from nothing."""
        if not states.can_transition(values["kind"], None, values["status"]):
            LOG.error("migration %s: refused to create a %s migration in status %s",
                      values["id"], values["kind"], values["status"])
            raise exception.InvalidTransition(id=values["id"], kind=values["kind"],
                                              current="(none)", wanted=values["status"])
        with self.session() as s:
            if s.get(models.Migration, values["id"]) is not None:
                return None
            s.add(models.Migration(**values))
        return self.migration_get(values["id"])

    def migration_get(self, mig_id):
        with self.session() as s:
            mig = s.get(models.Migration, mig_id)
            if mig is None:
                raise exception.MigrationNotFound(id=mig_id)
            return _to_dict(mig)

    def migration_update(self, mig_id, expected_status=None, **values):
        """Update a migration record in one SQL statement.

        A new ``status`` must be allowed by the kind's transition table
        (:mod:`computeagent.compute.states`) from the status the row has at that
        moment; ``expected_status`` (a status or a list) narrows that further.  The
        check and the write are one ``UPDATE ... WHERE status IN (...)``: of two
        racing transitions out of the same status exactly one wins, the other raises
        :class:`InvalidTransition` and changes nothing (and is logged)."""
        stmt = sa.update(models.Migration).where(models.Migration.id == mig_id)
        if expected_status is not None:
            if isinstance(expected_status, (str, states.enum.Enum)):
                expected_status = [expected_status]
            stmt = stmt.where(models.Migration.status.in_(
                [getattr(x, "value", x) for x in expected_status]))
        if "status" in values:
            values["status"] = getattr(values["status"], "value", values["status"])
            stmt = stmt.where(sa.or_(*[
                sa.and_(models.Migration.kind == kind,
                        models.Migration.status.in_(
                            sorted(x for x in states.allowed_from(kind, values["status"])
                                   if x is not None)))
                for kind in states.TRANSITIONS]))
        values.setdefault("updated_at", models.utcnow())
        with self.session() as s:
            res = s.execute(stmt.values(**values).execution_options(
                synchronize_session=False))
            mig = s.get(models.Migration, mig_id)
            if mig is None:
                raise exception.MigrationNotFound(id=mig_id)
            if res.rowcount == 0:
                wanted = values.get("status") or "(an update expecting %s)" % (expected_status,)
                LOG.warning("migration %s: refused transition %s -> %s (%s)", mig_id,
                            mig.status, wanted, mig.kind)
                raise exception.InvalidTransition(id=mig_id, kind=mig.kind,
                                                  current=mig.status, wanted=wanted)
            s.refresh(mig)
            return _to_dict(mig)

    def migration_get_all(self, statuses=None, instance_uuid=None):
        with self.session() as s:
            q = sa.select(models.Migration)
            if statuses is not None:
                q = q.where(models.Migration.status.in_(list(statuses)))
            if instance_uuid is not None:
                q = q.where(models.Migration.instance_uuid == instance_uuid)
            return [_to_dict(m) for m in s.scalars(q.order_by(models.Migration.created_at))]


def _sqlite_pragmas(dbapi_conn, _record):
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()


def _to_dict(obj):
    d = {c.key: getattr(obj, c.key) for c in sa.inspect(obj).mapper.column_attrs}
    if "meta" in d:
        d["metadata"] = d.pop("meta")
    return d
