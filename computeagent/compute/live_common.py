"""What the live-migration flow's modules (source, destination, recovery) share."""
from computeagent import exception
from computeagent.compute import states

ACTIVE_STATUSES = (states.MIG_QUEUED, states.MIG_PREPARING, states.MIG_RUNNING,
                   states.MIG_POST)


class LiveFailed(Exception):
    """The one failure path of the source's flow, raised at any step and handled
    once in ``_fail``: ``reason`` for the record, ``status`` it ends in,
    ``rollback_dest`` whether the destination may hold something to remove."""

    def __init__(self, reason, status=states.MIG_FAILED, rollback_dest=False):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.rollback_dest = rollback_dest


class GuestNotArrived(exception.ComputeAgentError):
    msg = "instance %(uuid)s has not arrived here (yet): %(reason)s"
