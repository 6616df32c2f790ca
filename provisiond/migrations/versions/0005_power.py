"""power: each resource's power driver settings and last polled state

The password is stored sealed (provisiond.secretbox), never in clear (issue 13).

Revision ID: 0005_power
Revises: 0003_wire_trust
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_power"
down_revision = "0003_wire_trust"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.add_column(sa.Column("power_driver", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("power_address", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("power_user", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("power_secret", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("power_options", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("power_state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("power_checked_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("power_error", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        for col in (
            "power_error",
            "power_checked_at",
            "power_state",
            "power_options",
            "power_secret",
            "power_user",
            "power_address",
            "power_driver",
        ):
            batch_op.drop_column(col)
