"""ha: N-to-1 failover state of appliances, HA pools of appliances and spares

Revision ID: 0007_ha
Revises: 0006_storagehost
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_ha"
down_revision = "0006_storagehost"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("appliance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ha_pool", sa.String(length=63), nullable=True))
        batch_op.add_column(sa.Column("ha_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("ha_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ha_failover_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("ha_token_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("ha_heartbeat_at", sa.DateTime(), nullable=True))
        batch_op.create_index("ix_appliance_ha_token_hash", ["ha_token_hash"])
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ha_pool", sa.String(length=63), nullable=True))
        batch_op.create_index("ix_resource_ha_pool", ["ha_pool"])


def downgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_index("ix_resource_ha_pool")
        batch_op.drop_column("ha_pool")
    with op.batch_alter_table("appliance", schema=None) as batch_op:
        batch_op.drop_index("ix_appliance_ha_token_hash")
        for col in (
            "ha_heartbeat_at",
            "ha_token_hash",
            "ha_failover_at",
            "ha_reason",
            "ha_state",
            "ha_pool",
        ):
            batch_op.drop_column(col)
