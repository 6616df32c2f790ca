"""templates: install template sets stored in the database (issue 12)

A set stored through ``provisiond template add`` / the API / the UI keeps its
files' template text (``files``), a description and when it last changed;
``provisiond.templatestore`` checks the text in the Jinja2 sandbox first.

Revision ID: 0008_templates
Revises: 0007_ha
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_templates"
down_revision = "0007_ha"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("template", schema=None) as batch_op:
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("files", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("template", schema=None) as batch_op:
        for col in ("updated_at", "files", "description"):
            batch_op.drop_column(col)
