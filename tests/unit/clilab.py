"""The CLI in unit tests: ``cli`` (click's runner on a loopback config), an initialised ``db``."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from provisiond import config as configmod
from provisiond.cli import main
from provisiond.db import Database


@pytest.fixture
def cli(config_file):
    runner = CliRunner()

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(main, ["--config", str(config_file), *args])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


@pytest.fixture
def db(config_file, cli) -> Database:
    cli("init")
    return Database(configmod.load(config_file).database_url)
