"""Outcomes of casts, announced as oslo.messaging notifications
(``publisher_id = computeagent.<host>``, event types ``instance.<action>.<phase>``)."""
import logging

import oslo_messaging as messaging

LOG = logging.getLogger(__name__)


class Notifier:
    def __init__(self, transport, host, topics=("notifications",)):
        self.publisher_id = "computeagent.%s" % host
        self._notifier = None
        if transport is not None:
            self._notifier = messaging.Notifier(
                transport, publisher_id=self.publisher_id, driver="messagingv2",
                topics=list(topics))
        self.sent = []   # last events, for `show` and tests in-process

    def notify(self, ctx, event_type, payload, error=False):
        self.sent.append((event_type, payload))
        del self.sent[:-200]
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
        self.notify(ctx, "instance.%s.%s" % (action, phase), payload,
                    error=(phase == "error"))
