"""initial schema: instances and migrations

Revision ID: 0001
Revises:
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("task_state", sa.String(32)),
        sa.Column("power_state", sa.String(32), nullable=False),
        sa.Column("flavor", sa.JSON, nullable=False),
        sa.Column("image", sa.JSON, nullable=False),
        sa.Column("networks", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("disk_path", sa.String(1024)),
        sa.Column("base_path", sa.String(1024)),
        sa.Column("fault", sa.Text),
        sa.Column("request_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("instance_uuid", sa.String(36), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("dest", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("step", sa.String(64)),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("data_total", sa.Integer, nullable=False),
        sa.Column("data_processed", sa.Integer, nullable=False),
        sa.Column("data_remaining", sa.Integer, nullable=False),
        sa.Column("downtime_ms", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("old_flavor", sa.JSON),
        sa.Column("new_flavor", sa.JSON),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade():
    op.drop_table("migrations")
    op.drop_table("instances")
