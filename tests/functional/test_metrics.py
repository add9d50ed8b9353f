"""The Prometheus endpoint of the real agents, scraped (curl inside the host's
namespace, on its loopback) before, during and after a live migration."""
import re
import threading

import pytest

from tests.functional.conftest import (TCG_LIVE_MIGRATION, delete_everywhere, gone, host_run, make_instance,
                                       wait_for, wait_state)

pytestmark = [pytest.mark.realstack, TCG_LIVE_MIGRATION]

A, B = "hosta", "hostb"


def scrape(lab, host):
    return host_run(lab, host, ["curl", "-sf", "--max-time", "10",
                                "http://127.0.0.1:9185/metrics"])


def value(text, name, **labels):
    total = None
    for line in text.splitlines():
        m = re.match(r"^(\w+)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0) + float(m.group(3))
    return total


def test_metrics_during_and_after_live_migration(lab, agent, ctxt, guest_image):
    before = scrape(lab, A)
    assert value(before, "computeagent_libvirt_connected") == 1
    assert value(before, "computeagent_rpc_server_up") == 1
    done_before = value(before, "computeagent_migrations_total", kind="live",
                        outcome="completed") or 0
    inst = make_instance(guest_image, name="metrics-vm", ips=("10.0.0.41",))
    try:
        agent.spawn(ctxt, A, inst)
        wait_state(agent, ctxt, A, inst["uuid"], "ACTIVE")
        spawned = scrape(lab, A)
        assert (value(spawned, "computeagent_image_cache_requests_total") or 0) >= 1
        assert value(spawned, "computeagent_notifications_total",
                     event_type="instance.create.end") >= 1

        seen, stop = [], threading.Event()

        def poll():
            while not stop.is_set():
                try:
                    seen.append(scrape(lab, A))
                except AssertionError:
                    pass
        t = threading.Thread(target=poll, daemon=True)
        t.start()
        mid = "mig-metrics-" + inst["uuid"][:8]
        agent.live_migrate(ctxt, A, inst["uuid"], B, mid)
        mig = wait_for(lambda: (lambda m: m if m["status"] in ("completed", "failed")
                                else None)(agent.get_migration(ctxt, A, mid)),
                       timeout=180, what="migration end")
        stop.set()
        t.join(30)
        assert mig["status"] == "completed", mig
        during = [s for s in seen
                  if value(s, "computeagent_migrations_in_progress", kind="live",
                           role="source")]
        assert during, "no scrape saw the migration in progress (%d scrapes)" % len(seen)

        after = scrape(lab, A)
        assert value(after, "computeagent_migrations_total", kind="live",
                     outcome="completed") == done_before + 1
        assert value(after, "computeagent_migration_duration_seconds_count",
                     kind="live", outcome="completed") >= 1
        assert value(after, "computeagent_live_migration_downtime_seconds_count") >= 1
        assert value(after, "computeagent_migration_bytes_total", kind="live",
                     part="total") >= mig["data_processed"] > 0
        assert not value(after, "computeagent_migrations_in_progress", kind="live",
                         role="source")
        dest = scrape(lab, B)
        assert value(dest, "computeagent_instances") >= 1
        assert (value(dest, "computeagent_image_cache_requests_total") or 0) >= 1
        dirty = [s for s in during
                 if value(s, "computeagent_live_migration_dirty_rate_bytes") is not None]
        assert dirty, "no scrape read the running migration's dirty rate"
        print("scrapes during the migration: %d of %d, with a dirty rate: %d" % (
            len(during), len(seen), len(dirty)))
    finally:
        delete_everywhere(agent, ctxt, inst["uuid"])
        wait_for(lambda: gone(agent, ctxt, A, inst["uuid"]) and
                 gone(agent, ctxt, B, inst["uuid"]), timeout=60, what="gone")
