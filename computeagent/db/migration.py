"""Schema management through Alembic (``computeagent-manage db sync``)."""
import os

from alembic import command
from alembic.config import Config

_SCRIPT_DIR = os.path.join(os.path.dirname(__file__), "alembic")


def _config(engine):
    cfg = Config()
    cfg.set_main_option("script_location", _SCRIPT_DIR)
    cfg.attributes["engine"] = engine
    return cfg


def db_sync(engine, revision="head"):
    command.upgrade(_config(engine), revision)


def db_version(engine):
    from alembic.runtime.migration import MigrationContext
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
