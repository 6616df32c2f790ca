"""storagehost: a storage's host (SSH) and whether it is up (issue 16)

Revision ID: 0006_storagehost
Revises: 0005_power
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_storagehost"
down_revision = "0005_power"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("storage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("host_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("host_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("storage", schema=None) as batch_op:
        for col in ("host_reason", "host_state", "host"):
            batch_op.drop_column(col)
