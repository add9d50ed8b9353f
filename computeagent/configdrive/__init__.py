"""The config drive: what an instance learns about itself without a metadata server.

OpenStack layout on an ISO 9660 (Rock Ridge + Joliet) image labelled ``config-2``:
``openstack/latest/meta_data.json``, ``openstack/latest/network_data.json`` and
``openstack/latest/user_data`` (when given). Unlike nova's (which writes only ``ips[0]``
of each subnet, the 2011 limitation), ``network_data.json`` carries **every fixed IP of
every VIF**: one network entry per address, links by MAC.

* :mod:`content` - the files, as bytes, from an instance record (pure, no I/O).
* :mod:`iso` - writing the image with pycdlib, reading it back, the content digest.
* :mod:`flows` - what the manager and the migration flows call (build at spawn,
  rebuild and swap the medium on a fixed-IP change, carry the drive to a destination).

The hypervisor calls (attaching the cdrom, changing its medium, fetching a peer's
file) stay in ``computeagent.virt``; nothing here imports libvirt.
"""
