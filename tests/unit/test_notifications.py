"""Every notification payload carries its schema name and version, and the instance
payloads the agent really sends (spawn, a refused spawn, delete) match the documented
JSON Schema."""
import jsonschema

from computeagent import notifications
from tests.unit.test_agent_fake import agent_env, inst_payload, state_of, wait  # noqa: F401


def test_payloads_are_versioned_and_match_schema(agent_env):
    svc, client, image, _tmp = agent_env
    inst = inst_payload(image)
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    bad = inst_payload(image, networks=[{"id": "n1", "bridge": "not-allowed",
                                         "mac": "52:54:00:00:00:0a", "fixed_ips": []}])
    client.spawn({}, "fakehost", bad)
    client.delete({}, "fakehost", inst["uuid"])
    wait(lambda: state_of(client, inst["uuid"]) is None)
    wait(lambda: any(e.endswith(".error") for e, _ in svc.manager.notifier.sent))
    sent = list(svc.manager.notifier.sent)
    kinds = {e for e, _ in sent}
    assert {"instance.create.start", "instance.create.end", "instance.delete.end"} <= kinds
    for event_type, payload in sent:
        assert event_type.startswith("instance.")
        jsonschema.validate(payload, notifications.INSTANCE_PAYLOAD_SCHEMA)
        assert payload["payload_version"] == notifications.INSTANCE_PAYLOAD[1]


def test_generic_payload_keeps_its_own_version():
    n = notifications.Notifier(None, "h")
    n.notify(None, "agent.something", {"x": 1})
    n.notify(None, "agent.other", {"payload_name": "Other", "payload_version": "2.1"})
    assert n.sent[0][1] == {"payload_name": "EventPayload", "payload_version": "1.0",
                            "x": 1}
    assert n.sent[1][1]["payload_version"] == "2.1"
