"""A SAN boot's CHAP secret is sealed in the database (provisiond.chapsecret).

Real SQLite (and a private PostgreSQL cluster when the machine has one): an
appliance row written by an older version with the secret in clear is sealed
in place by the migration, opens back to the same secret through the one
accessor, is refused with the fix when the migration has no server key, and
is opened again by a downgrade. The daemon-level proof (no plaintext in the
database file after ``appliance start``; the script carries the right secret
only to its machine) is tests/interop/test_sanboot.py.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import text

from provisiond import appliances, chapsecret, resources
from provisiond.db import MIGRATIONS, Database
from provisiond.model import Image
from provisiond.secretbox import SecretBoxError, is_sealed
from tests.pg import private_cluster

SECRET = "PlainChap123456"


def _alembic(db: Database) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = db.engine
    return cfg


def _before_sealing(cfg: AlembicConfig) -> str:
    """The revision before this one (found by name: it may be renumbered)."""
    (rev,) = [r for r in ScriptDirectory.from_config(cfg).walk_revisions()
              if r.revision.endswith("_chap_sealed")]  # fmt: skip
    return rev.down_revision


@contextlib.contextmanager
def _url(kind: str, tmp_path):
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'p.db'}"
    else:
        with private_cluster() as url:
            yield url


def _raw_params(db: Database) -> str:
    with db.engine.connect() as c:
        return str(c.execute(text("SELECT params FROM appliance")).scalar_one())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migration_seals_plain_chap_secrets_in_place(kind, tmp_path):
    state = tmp_path / "state"
    with _url(kind, tmp_path) as url:
        db = Database(url)
        try:
            db.migrate(state)
            with db.transaction() as s:  # what an older version wrote
                res = resources.ensure(s, "52:54:00:cc:00:01")
                s.add(Image(name="img", size=1))
                s.flush()
                app = appliances.create(s, name="web1", resource=res, mode="sanboot", image="img")
                app.params = {
                    "target_iqn": "iqn.x:web1",
                    "chap_user": "web1",
                    "chap_secret": SECRET,
                }
            cfg = _alembic(db)
            command.downgrade(cfg, _before_sealing(cfg))  # nothing sealed: nothing to open
            assert SECRET in _raw_params(db)

            with pytest.raises(RuntimeError, match="re-sealed with the server key"):
                db.migrate()  # no state_dir: refused, nothing changed
            assert SECRET in _raw_params(db)

            db.migrate(state)
            raw = _raw_params(db)
            assert SECRET not in raw and "sealed:v1:" in raw and "iqn.x:web1" in raw
            with db.reader() as s:
                (params,) = s.execute(text("SELECT params FROM appliance")).one()
            params = params if isinstance(params, dict) else json.loads(params)
            assert is_sealed(params["chap_secret"])
            assert chapsecret.secret_of(state, params) == SECRET
            db.migrate(state)  # again: already sealed, unchanged
            assert _raw_params(db) == raw

            down = _alembic(db)
            down.attributes["state_dir"] = state
            command.downgrade(down, _before_sealing(cfg))
            assert SECRET in _raw_params(db)  # the older version reads it again
        finally:
            db.dispose()


def test_the_accessor_opens_only_what_the_server_key_sealed(tmp_path):
    sealed = chapsecret.seal(tmp_path / "a", SECRET)
    assert SECRET not in sealed
    assert chapsecret.secret_of(tmp_path / "a", {"chap_secret": sealed}) == SECRET
    assert chapsecret.secret_of(tmp_path / "a", {}) is None
    with pytest.raises(SecretBoxError) as err:  # another server's key
        chapsecret.secret_of(tmp_path / "b", {"chap_secret": sealed})
    assert SECRET not in str(err.value) and "secret.key" in str(err.value)
