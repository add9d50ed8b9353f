"""computeagent.notification_sender: reporting never blocks the reporter."""
import threading

from computeagent import notification_sender


class BlockedNotifier:
    """Stands for a notifier whose broker is unreachable: send blocks until released."""

    def __init__(self):
        self.release = threading.Event()
        self.sent = []

    def info(self, ctxt, event_type, payload):
        self.release.wait(30)
        self.sent.append(event_type)

    error = info


def test_info_returns_while_the_sender_is_blocked_and_sends_later():
    n = BlockedNotifier()
    s = notification_sender.AsyncSender(n, maxlen=10)
    done = threading.Event()

    def work():
        for i in range(5):
            s.info({}, "instance.x.%d" % i, {})
        done.set()

    threading.Thread(target=work, daemon=True).start()
    assert done.wait(5), "notify blocked its caller"
    n.release.set()
    for _ in range(100):
        if len(n.sent) == 5:
            break
        threading.Event().wait(0.05)
    assert n.sent == ["instance.x.%d" % i for i in range(5)]


def test_full_queue_drops_the_oldest():
    n = BlockedNotifier()
    s = notification_sender.AsyncSender(n, maxlen=3)
    for i in range(10):
        s.info({}, "e%d" % i, {})
    assert s.dropped >= 6
    assert s.pending() <= 3
    n.release.set()


def test_send_failure_is_counted_not_raised():
    class Broken:
        def info(self, *a):
            raise RuntimeError("broker unreachable after 2 retries")
        error = info
    s = notification_sender.AsyncSender(Broken())
    s.error({}, "instance.y.error", {})
    for _ in range(100):
        if s.failed:
            break
        threading.Event().wait(0.05)
    assert s.failed == 1
