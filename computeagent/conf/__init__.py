"""Configuration: one module per option group, all registered on ``cfg.CONF``.

oslo.messaging registers some of its groups only on the global ``cfg.CONF``; the
agent therefore uses that object everywhere.
"""
from oslo_config import cfg

from computeagent.conf import default
from computeagent.conf import database
from computeagent.conf import debug
from computeagent.conf import image_cache
from computeagent.conf import libvirt
from computeagent.conf import migration
from computeagent.conf import network
from computeagent.conf import qemu_img

CONF = cfg.CONF

_MODULES = [default, database, debug, image_cache, libvirt, migration, network, qemu_img]

for _mod in _MODULES:
    _mod.register_opts(CONF)


def list_opts():
    """Entry point for oslo-config-generator."""
    return [item for m in _MODULES for item in m.list_opts()]
