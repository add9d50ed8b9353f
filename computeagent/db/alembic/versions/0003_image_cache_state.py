"""image_cache: pre-cache state per image (queued/downloading/cached/failed)

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "image_cache",
        sa.Column("image_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("bytes_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_total", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("digest", sa.String(64), nullable=True),
        sa.Column("disk_format", sa.String(16), nullable=True),
        sa.Column("source", sa.String(300), nullable=True),
        sa.Column("failure_reason", sa.Text, nullable=True),
        sa.Column("pinned_until", sa.DateTime, nullable=True),
        sa.Column("last_used", sa.DateTime, nullable=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("image", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade():
    op.drop_table("image_cache")
