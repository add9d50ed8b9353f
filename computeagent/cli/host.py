"""Host commands: host-status."""
from computeagent.cli import base


class HostStatus(base.ShowCommand):
    """Show a host's capacity, instance count and libvirt connection state."""

    def record(self, a):
        return self.call("get_host_status")


COMMANDS = {"host-status": HostStatus}
