"""The computeagent lab: real libvirt/QEMU hypervisors, a RabbitMQ node and an image
server on one machine, for functional tests and demos.  See computeagent.lab.lab."""
from computeagent.lab.lab import (  # noqa: F401
    DEFAULT_LAB_DIR,
    INSTANCES_PATH,
    STATE_PATH,
    Lab,
    LabError,
    default_lab_dir,
)

__all__ = ["DEFAULT_LAB_DIR", "INSTANCES_PATH", "STATE_PATH", "Lab", "LabError",
           "default_lab_dir"]
