"""The agent's defaults for oslo.messaging: a bus that survives the loss of a RabbitMQ
node and that RabbitMQ 4.x accepts.  oslo.messaging's own defaults are for a single
3.x node: classic, non-replicated queues (lost with their node), transient
non-exclusive reply and fanout queues (refused by RabbitMQ 4.3), unlimited prefetch.

* ``rabbit_quorum_queue``: the agent's RPC queues (``computeagent``,
  ``computeagent.<host>``) are quorum queues: durable, replicated on every node (Raft),
  so a node's death or restart loses no queued cast and needs no re-declaration.
* ``rabbit_transient_quorum_queue``: reply queues are quorum queues too (with
  ``x-expires``), so a call's reply survives a node failure and RabbitMQ 4.3 accepts them.
* ``rabbit_transient_quorum_queue`` also makes the fanout queues quorum queues.
  ``rabbit_stream_fanout`` stays off: with oslo.messaging 18.3 the stream consumer
  is started without a prefetch on its channel and RabbitMQ refuses it ("consumer
  prefetch count is not set", 406), in a loop that leaves the whole server deaf
  (seen in the lab on RabbitMQ 3.10).
* ``use_queue_manager`` stays off: it names reply queues after host and process, but
  needs ``[oslo_concurrency] lock_path`` in every client (scheduler, computeagent-ctl);
  reply queues with random names expire after ``rabbit_transient_queues_ttl``.
* ``rabbit_qos_prefetch_count``: at most this many unacknowledged messages per
  consumer (unbounded prefetch lets one consumer hoard what another could serve).
* Heartbeats every 10 s (``heartbeat_timeout_threshold`` 30, rate 3): a dead peer
  behind a silent network is noticed in 30 s, not 60.  Reconnect back-off capped at
  10 s (``rabbit_interval_max``) so a failover costs seconds.
* ``[oslo_messaging_notifications] driver = messagingv2`` (the agent's event stream),
  ``retry = 2``: a notification is given up after 2 reconnection attempts instead of
  retrying forever (and computeagent.notifications sends it off the worker thread).

These are defaults (``cfg.set_defaults``, the oslo way): every one can be changed in
the config file, and they show in the config sample.  The same settings must be used
by every client of the agent (scheduler, computeagent-ctl): quorum and classic queues
of the same name conflict (406 PRECONDITION_FAILED).  Switching an existing cloud:
stop the agents, delete their old classic queues, start them with these settings.
"""
from oslo_config import cfg
from oslo_messaging._drivers import impl_rabbit
from oslo_messaging.notify import notifier

RABBIT_DEFAULTS = {
    "rabbit_quorum_queue": True,
    "rabbit_transient_quorum_queue": True,
    "rabbit_qos_prefetch_count": 16,
    "heartbeat_timeout_threshold": 30,
    "heartbeat_rate": 3,
    "rabbit_interval_max": 10,
}
NOTIFICATION_DEFAULTS = {
    "driver": ["messagingv2"],
    "retry": 2,
}


def set_defaults(conf=None):
    """Apply the agent's defaults to oslo.messaging's options (idempotent).  Also the
    ``oslo.config.opts.defaults`` hook of the config generator."""
    cfg.set_defaults(impl_rabbit.rabbit_opts, **RABBIT_DEFAULTS)
    cfg.set_defaults(notifier._notifier_opts, **NOTIFICATION_DEFAULTS)


GROUP = "rpc_watchdog"

opts = [
    cfg.IntOpt("interval", default=30, min=0,
               help="Seconds between checks that the agent's own RPC server queue has "
                    "its consumer and that a call to itself round-trips "
                    "(computeagent.rpc.watchdog); 0 disables the watchdog."),
    cfg.IntOpt("call_timeout", default=10, min=1,
               help="Seconds the watchdog's call to its own agent may take."),
    cfg.IntOpt("failures", default=2, min=1,
               help="Failed round trips in a row after which the RPC server is "
                    "restarted (a queue without consumer restarts it at once)."),
]


def register_opts(conf):
    conf.register_opts(opts, group=GROUP)


def list_opts():
    return [(GROUP, opts)]
