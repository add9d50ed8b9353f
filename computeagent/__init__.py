"""computeagent: a per-hypervisor compute agent on libvirt/QEMU (native threads only)."""
