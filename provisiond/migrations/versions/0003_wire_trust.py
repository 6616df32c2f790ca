"""wire trust: a host key (and address) waiting for the operator

A registration that presents a host key other than the pinned one puts the
resource in ``key-changed`` and keeps what it offered here until
``provisiond resource accept-key`` (issue 11).

Revision ID: 0003_wire_trust
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_wire_trust"
down_revision = "0004_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.add_column(sa.Column("hostkey_pending", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("ip_pending", sa.String(length=45), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resource", schema=None) as batch_op:
        batch_op.drop_column("ip_pending")
        batch_op.drop_column("hostkey_pending")
