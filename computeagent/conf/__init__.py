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
from computeagent.conf import messaging
from computeagent.conf import metrics
from computeagent.conf import migration
from computeagent.conf import network
from computeagent.conf import qemu_img

CONF = cfg.CONF

_MODULES = [default, database, debug, image_cache, libvirt, metrics, migration, network,
            qemu_img, messaging]

for _mod in _MODULES:
    _mod.register_opts(CONF)
messaging.set_defaults()  # oslo.messaging: cluster- and RabbitMQ 4.x-ready


#: test-only options: registered like the others, but kept out of the production
#: sample (etc/computeagent/computeagent.conf.sample); they have their own sample
_TEST_ONLY_MODULES = [debug]


def list_opts():
    """Entry point for oslo-config-generator (namespace ``computeagent``)."""
    return [item for m in _MODULES if m not in _TEST_ONLY_MODULES
            for item in m.list_opts()]


def list_test_opts():
    """Entry point for oslo-config-generator (namespace ``computeagent.tests``)."""
    return [item for m in _TEST_ONLY_MODULES for item in m.list_opts()]
