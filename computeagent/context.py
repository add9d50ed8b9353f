"""Request context: the RPC context dict's ``request_id`` follows the work into
every thread, so oslo.log's context formatter prints it on every log line."""
import re

from oslo_context import context as o_context
from oslo_utils import uuidutils

#: what a caller's request_id may look like (it lands in every log line: no
#: newlines, no escapes, no markup); anything else is replaced by a fresh id
REQUEST_ID_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")


def from_rpc(ctxt):
    """Make (and make current for this thread) a context from an RPC context."""
    rid = None
    if isinstance(ctxt, dict):
        rid = ctxt.get("request_id")
    if not isinstance(rid, str) or not REQUEST_ID_RE.match(rid):
        rid = "req-" + uuidutils.generate_uuid()
    return o_context.RequestContext(request_id=rid, overwrite=True)


def adopt(ctx):
    """Make ``ctx`` current in a worker thread."""
    ctx.update_store()
    return ctx


def new_context():
    return o_context.RequestContext(overwrite=True)


def to_rpc(ctx=None):
    ctx = ctx or o_context.get_current()
    return {"request_id": ctx.request_id if ctx else "req-" + uuidutils.generate_uuid()}
