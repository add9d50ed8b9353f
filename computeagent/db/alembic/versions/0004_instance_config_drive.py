"""instances: config drive flag and user data (RPC 1.4)

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("config_drive", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("user_data", sa.Text, nullable=True))


def downgrade():
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("user_data")
        batch.drop_column("config_drive")
