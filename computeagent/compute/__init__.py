"""The flows: what the agent does to an instance and in which order.

``manager`` (spawn, power, fixed IPs, delete, start-up recovery), ``live_migration`` and
``resize`` (both sides of each flow), ``states`` (the state machines).  They talk to the
hypervisor only through :mod:`computeagent.virt` and :mod:`computeagent.images`, keep
their records through :mod:`computeagent.db`, and never import libvirt."""
