"""Metrics of the in-process agent on fakes: image cache and notification figures
after a real spawn, and the gauges read on scrape."""
import re

from computeagent import exception  # noqa: F401  (the fixture module needs it loaded)
from tests.unit.test_agent_fake import agent_env, inst_payload, state_of, wait  # noqa: F401


def value(text, name, **labels):
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_spawn_figures_and_scrape_gauges(agent_env):
    svc, client, image, _tmp = agent_env
    before = svc.metrics.render()
    assert value(before, "computeagent_libvirt_connected") == 1
    assert value(before, "computeagent_rpc_server_up") == 1
    inst = inst_payload(image)
    client.spawn({}, "fakehost", inst)
    wait(lambda: (state_of(client, inst["uuid"]) or {}).get("state") == "ACTIVE")
    text = svc.metrics.render()
    assert value(text, "computeagent_image_cache_requests_total", result="miss") == 1
    assert value(text, "computeagent_image_cache_downloads_total") == 1
    assert value(text, "computeagent_image_cache_download_bytes_total") == image["size"]
    assert value(text, "computeagent_notifications_total",
                 event_type="instance.create.end", priority="info") == 1
    assert value(text, "computeagent_instances") == 1
    inst2 = inst_payload(image)
    client.spawn({}, "fakehost", inst2)
    wait(lambda: (state_of(client, inst2["uuid"]) or {}).get("state") == "ACTIVE")
    text = svc.metrics.render()
    assert value(text, "computeagent_image_cache_requests_total", result="hit") == 1
    assert value(text, "computeagent_image_cache_downloads_total") == 1
