"""Agent-to-agent calls prove their context (RPC 1.3).

Every agent-to-agent call carries ``peer = {"host": <caller>, "role": "source" |
"dest"}`` besides the migration id and instance uuid.  Before anything runs, the
receiver checks them against its own record of that migration: the method is one the
caller's role may call, the caller is the record's other host, this host is the
record's own side, the uuid is the record's, and the record's status is one in which
the call makes sense.  A replayed, late, duplicated or forged call is refused with
:class:`PeerRefused` and changes nothing.  (This proves consistency, not identity:
identity comes from the authenticated transports, see docs/security.md.)
"""
from computeagent import exception
from computeagent.compute import states
from computeagent.rpc import schema

L, R = states.LiveStatus, states.ResizeStatus

# method -> (kind, role of the caller, statuses of the receiver's record in which the
# call is accepted; None in the set: accepted when there is no record yet)
RULES = {
    "pre_live_migration": ("live", "source", {None}),
    "post_live_migration_at_destination": ("live", "source", {L.RUNNING}),
    "rollback_live_migration_at_destination": ("live", "source",
                                               {None, L.PREPARING, L.RUNNING, L.FAILED,
                                                L.CANCELLED}),
    "prep_resize": ("resize", "source", {None}),
    "finish_resize": ("resize", "source", {R.PREPARING}),
    "resize_rollback_at_dest": ("resize", "source",
                                {None, R.PREPARING, R.FINISHING, R.VERIFY_RESIZE,
                                 R.FAILED}),
    # after the end (confirmed / reverted) a replay is refused; the refusal names
    # the status, so a destination whose first call's answer was lost knows it is done
    "confirm_resize_at_source": ("resize", "dest", {R.VERIFY_RESIZE, R.CONFIRMING}),
    "finish_revert_resize": ("resize", "dest", {R.VERIFY_RESIZE, R.REVERTING}),
}

# the role the *caller* of each method plays (the client fills ``peer`` from this)
CALLER_ROLE = {m: rule[1] for m, rule in RULES.items()}


def validate_peer(peer):
    if not isinstance(peer, dict) or set(peer) - {"host", "role"}:
        raise exception.PeerRefused(method="?", reason="peer must be {host, role}")
    role = peer.get("role")
    if role not in ("source", "dest"):
        raise exception.PeerRefused(method="?", reason="unknown peer role %r"
                                    % (str(role)[:32],))
    return {"host": schema.host_name(peer.get("host")), "role": role}


def check(db, this_host, method, peer, instance_uuid, migration_id, payload=None):
    """Refuse (raise PeerRefused) unless ``method`` makes sense from ``peer`` for the
    migration as this host records it.  ``payload`` is the migration dict a
    preparation call carries (it creates the record, so it is checked instead)."""
    kind, role, accepted = RULES[method]

    def refuse(reason, status=None):
        raise exception.PeerRefused(method=method, reason=reason, status=status)

    if peer is None:
        refuse("no peer context (callers older than RPC 1.3 are not accepted)")
    try:
        peer = validate_peer(peer)
    except exception.PeerRefused as e:
        refuse(e.kwargs.get("reason", str(e)))
    if peer["role"] != role:
        refuse("a %s may not call it (caller says it is the %s)" % (
            "source" if role == "dest" else "destination", peer["role"]))
    uuid = schema.uuid_of(instance_uuid)
    mid = schema.migration_id(migration_id)
    try:
        mig = db.migration_get(mid)
    except exception.MigrationNotFound:
        mig = None
    if payload is not None:
        src = schema.host_name(payload.get("source"))
        dst = schema.host_name(payload.get("dest"))
        if src != peer["host"] or dst != this_host:
            refuse("migration %s is %s -> %s, but the call came from %s to %s"
                   % (mid, src, dst, peer["host"], this_host))
    if mig is None:
        if None not in accepted:
            refuse("no migration %s here" % mid)
        return None
    if mig["kind"] != kind:
        refuse("migration %s is a %s migration here" % (mid, mig["kind"]))
    if mig["instance_uuid"] != uuid:
        refuse("migration %s is of instance %s, not %s" % (mid, mig["instance_uuid"],
                                                            uuid))
    mine, theirs = ("dest", "source") if role == "source" else ("source", "dest")
    if mig[mine] != this_host or mig[theirs] != peer["host"]:
        refuse("migration %s is %s -> %s here; the call came from %s" % (
            mid, mig["source"], mig["dest"], peer["host"]))
    if mig["status"] not in {getattr(s, "value", s) for s in accepted if s is not None}:
        refuse("migration %s is %s here" % (mid, mig["status"]), status=mig["status"])
    return mig
