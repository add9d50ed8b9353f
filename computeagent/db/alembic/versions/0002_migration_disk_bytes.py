"""migrations: disk and memory bytes separately (INC copies only the overlay)

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("migrations") as batch:
        batch.add_column(sa.Column("disk_total", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("disk_processed", sa.BigInteger, nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("memory_processed", sa.BigInteger, nullable=False,
                                   server_default="0"))


def downgrade():
    with op.batch_alter_table("migrations") as batch:
        batch.drop_column("memory_processed")
        batch.drop_column("disk_processed")
        batch.drop_column("disk_total")
