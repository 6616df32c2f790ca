"""chap_sealed: SAN-boot CHAP secrets in appliance params are sealed, not plain

Older versions stored ``params["chap_secret"]`` in clear; it is now sealed with
the server key (provisiond.secretbox, provisiond.chapsecret). This seals the
plain ones in place. The key lives in the state directory, which
``Database.migrate(state_dir)`` hands in; without it, a database that holds a
plain secret is refused with the fix, never left half-migrated.

Revision ID: 0009_chap_sealed
Revises: 0008_templates
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

from provisiond.secretbox import for_state_dir, is_sealed

revision = "0009_chap_sealed"
down_revision = "0008_templates"
branch_labels = None
depends_on = None

KEY = "chap_secret"
appliance = sa.table("appliance", sa.column("id", sa.Integer), sa.column("params", sa.JSON))


def _rewrite(want_sealed: bool) -> None:
    bind = op.get_bind()
    rows = [
        (row_id, params)
        for row_id, params in bind.execute(sa.select(appliance.c.id, appliance.c.params))
        if params and params.get(KEY) and is_sealed(params[KEY]) != want_sealed
    ]
    if not rows:
        return
    state_dir = context.config.attributes.get("state_dir")
    if state_dir is None:
        raise RuntimeError(
            f"{len(rows)} appliance CHAP secret(s) must be re-sealed with the server key: "
            "run the migration through the daemon or `provisiond init` (they know state_dir)"
        )
    box = for_state_dir(Path(state_dir))
    change = box.seal if want_sealed else box.open
    for row_id, params in rows:
        new = {**params, KEY: change(str(params[KEY]))}
        bind.execute(appliance.update().where(appliance.c.id == row_id).values(params=new))


def upgrade() -> None:
    _rewrite(want_sealed=True)


def downgrade() -> None:
    _rewrite(want_sealed=False)
