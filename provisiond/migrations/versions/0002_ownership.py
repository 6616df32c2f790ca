"""ownership: the instance table (lock holder + lease) and owner on transient work

Revision ID: 0002_ownership
Revises: 0001
Create Date: 2026-12-02 17:30:00

Each daemon sharing the database has an ``instance`` row it renews while it
runs (heartbeat_at, expires_at). Resources, appliances and jobs carry the
``owner`` instance of their transient work, so a starting instance fails
only its own leftovers and the work of instances whose lease has expired.
Rows from before this revision have no owner: recovery treats a running
one as a leftover of the single daemon that ran them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_ownership"
down_revision = "0001"
branch_labels = None
depends_on = None

OWNED = ("resource", "appliance", "job")


def upgrade() -> None:
    op.create_table(
        "instance",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instance_expires_at"), ["expires_at"], unique=False)
    for table in OWNED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("owner", sa.String(length=63), nullable=True))
            batch_op.create_index(batch_op.f(f"ix_{table}_owner"), ["owner"], unique=False)


def downgrade() -> None:
    for table in reversed(OWNED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_owner"))
            batch_op.drop_column("owner")
    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instance_expires_at"))
    op.drop_table("instance")
