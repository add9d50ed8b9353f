"""A guest's console.log stays within ``[libvirt] console_log_max_bytes`` (issue 9):
the real guest boots with a chatty kernel (no ``quiet``, ``ignore_loglevel
initcall_debug``: hundreds of KB on its serial console, far beyond a small cap); the
agent's periodic task cuts the file, the newest GUESTCHECK lines stay, QEMU keeps
appending."""
import time

import pytest

from tests.functional.conftest import (delete_everywhere, host_file_text, host_run,
                                       make_instance, wait_for, wait_state)

pytestmark = pytest.mark.realstack

A = "hosta"
CAP = 16384
INSTANCES = "/var/lib/computeagent/instances"


@pytest.fixture
def capped_agent(lab, guest_artifacts):
    chatty = guest_artifacts.cmdline.replace("quiet", "") + " ignore_loglevel initcall_debug"
    lab.stop_agent(A)
    lab.start_agent(A, extra_conf={"libvirt": {"console_log_max_bytes": str(CAP),
                                               "kernel_cmdline": chatty}})
    try:
        yield
    finally:
        lab.stop_agent(A)
        lab.start_agent(A, extra_conf={})


def test_console_log_is_bounded_and_keeps_newest(lab, agent, ctxt, guest_image,
                                                 capped_agent):
    inst = make_instance(guest_image, name="console-cap")
    uuid = inst["uuid"]
    path = "%s/%s/console.log" % (INSTANCES, uuid)
    try:
        agent.spawn(ctxt, A, inst)
        wait_state(agent, ctxt, A, uuid, "ACTIVE")

        def cut_and_checking():
            text = host_file_text(lab, A, path)
            checks = [ln for ln in text.splitlines() if ln.startswith("GUESTCHECK ")]
            return (text.startswith("[computeagent: console log truncated")
                    and len(checks) >= 2 and text)
        text = wait_for(cut_and_checking, timeout=120, interval=1,
                        what="console.log cut, guest still checking")
        assert "FAIL" not in text
        n = int([ln for ln in text.splitlines() if ln.startswith("GUESTCHECK ")][-1]
                .split()[1])
        # later output keeps coming, into the same bounded file
        wait_for(lambda: "GUESTCHECK %d OK" % (n + 3) in host_file_text(lab, A, path),
                 timeout=60, interval=1, what="newer GUESTCHECK lines")
        for _ in range(5):
            size = int(host_run(lab, A, ["stat", "-c", "%s", path]).strip())
            # between two checks (2 s) the guest adds a line a second
            assert size <= CAP + 1024, size
            time.sleep(1)
    finally:
        delete_everywhere(agent, ctxt, uuid)
