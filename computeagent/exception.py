"""Errors the agent raises. Those listed in ``rpc.api.ALLOWED_EXMODS`` reach an RPC
caller as themselves (oslo.messaging re-raises them by module and class name)."""


class ComputeAgentError(Exception):
    msg = "An unknown error occurred"

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.msg % kwargs
            except (KeyError, TypeError):
                message = self.msg
        super().__init__(message)


class InvalidInput(ComputeAgentError):
    msg = "Invalid input: %(reason)s"


class InsecureTransport(ComputeAgentError):
    msg = "Insecure hypervisor transport refused: %(reason)s"


class InstanceNotFound(ComputeAgentError):
    msg = "Instance %(uuid)s could not be found"


class InstanceExists(ComputeAgentError):
    msg = "Instance %(uuid)s already exists"


class InstanceInvalidState(ComputeAgentError):
    msg = "Instance %(uuid)s is in state %(state)s; %(action)s needs %(needed)s"


class MigrationNotFound(ComputeAgentError):
    msg = "Migration %(id)s could not be found"


class MigrationError(ComputeAgentError):
    msg = "Migration failed: %(reason)s"


class ImageUnacceptable(ComputeAgentError):
    msg = "Image %(image_id)s is unacceptable: %(reason)s"


class ImageDownloadFailed(ComputeAgentError):
    msg = "Image %(image_id)s could not be downloaded: %(reason)s"


class BackingChainInvalid(ComputeAgentError):
    msg = "Backing chain of %(path)s is wrong: %(reason)s"


class HypervisorUnavailable(ComputeAgentError):
    msg = "libvirt is not reachable: %(reason)s"


class QemuImgError(ComputeAgentError):
    msg = "qemu-img failed: %(reason)s"


class InvalidTransition(MigrationError):
    msg = ("Migration %(id)s: %(kind)s migration cannot go from %(current)s to "
           "%(wanted)s")


class PeerRefused(MigrationError):
    msg = "Refused peer call %(method)s: %(reason)s"
