"""Outcomes of casts, announced as oslo.messaging notifications
(``publisher_id = computeagent.<host>``, event types ``instance.<action>.<phase>``).

Every payload is versioned (docs/notifications.md): ``payload_name`` names its schema,
``payload_version`` is ``MAJOR.MINOR``; a new optional field bumps MINOR, a removed or
changed field bumps MAJOR.  Consumers check the major version they understand."""
import logging

import oslo_messaging as messaging

from computeagent import notification_sender

LOG = logging.getLogger(__name__)

#: schema of ``instance.*`` payloads; history in docs/notifications.md
INSTANCE_PAYLOAD = ("InstanceActionPayload", "1.0")
#: any other payload sent through :meth:`Notifier.notify` without its own schema
GENERIC_PAYLOAD = ("EventPayload", "1.0")

#: JSON Schema of InstanceActionPayload 1.x (docs/notifications.md)
INSTANCE_PAYLOAD_SCHEMA = {
    "type": "object",
    "required": ["payload_name", "payload_version", "instance_uuid", "state", "host"],
    "properties": {
        "payload_name": {"const": "InstanceActionPayload"},
        "payload_version": {"type": "string", "pattern": r"^1\.[0-9]+$"},
        "instance_uuid": {"type": ["string", "null"]},
        "state": {"type": ["string", "null"]},
        "host": {"type": ["string", "null"]},
        "fault": {"type": "string"},
        "migration_id": {"type": "string"},
        "dest": {"type": "string"},
        "downtime_ms": {"type": ["integer", "null"]},
        "address": {"type": "string"},
        "problems": {"type": "array", "items": {"type": "string"}},
        "source_files_kept": {"type": "boolean"},
    },
    "additionalProperties": True,   # a 1.x minor version may add optional fields
}


def versioned(payload, schema):
    """``payload`` with ``payload_name``/``payload_version`` (kept if already set)."""
    out = {"payload_name": schema[0], "payload_version": schema[1]}
    out.update(payload)
    return out


class Notifier:
    """``[oslo_messaging_notifications] driver``, ``topics`` and ``retry`` decide how
    and where (``topics`` here overrides the option); sending happens on a thread of
    its own (computeagent.notification_sender), so a broker outage never holds the
    operation being reported."""

    def __init__(self, transport, host, topics=None):
        self.publisher_id = "computeagent.%s" % host
        self._notifier = None
        if transport is not None:
            self._notifier = notification_sender.AsyncSender(messaging.Notifier(
                transport, publisher_id=self.publisher_id,
                topics=list(topics) if topics else None))
        self.sent = []   # last events, for `show` and tests in-process
        self.observers = []   # fn(event_type, payload, error): the metrics

    def notify(self, ctx, event_type, payload, error=False):
        payload = versioned(payload, GENERIC_PAYLOAD)
        self.sent.append((event_type, payload))
        del self.sent[:-200]
        for observe in self.observers:
            observe(event_type, payload, error)
        if self._notifier is None:
            return
        rpc_ctx = {"request_id": getattr(ctx, "request_id", None)}
        try:
            if error:
                self._notifier.error(rpc_ctx, event_type, payload)
            else:
                self._notifier.info(rpc_ctx, event_type, payload)
        except Exception:
            # A broker outage must not fail the operation that is being reported.
            LOG.exception("could not send notification %s", event_type)

    def instance(self, ctx, instance, action, phase, fault=None, **extra):
        payload = {"instance_uuid": instance.get("uuid") if instance else None,
                   "state": instance.get("state") if instance else None,
                   "host": instance.get("host") if instance else None}
        if fault:
            payload["fault"] = fault
        payload.update(extra)
        payload = versioned(payload, INSTANCE_PAYLOAD)
        self.notify(ctx, "instance.%s.%s" % (action, phase), payload,
                    error=(phase == "error"))
