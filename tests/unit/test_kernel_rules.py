"""One kernel rule (provisiond.kernels.check): the REST API and the CLI give the same verdict.

Before, ``POST /api/v1/kernels`` checked script-safety and paths but took any
name, and ``provisiond kernel add`` checked its own name rule and only two
fields. Each row below goes through both; they must agree on accepted or
refused, and on the field a refusal names.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from provisiond import config as configmod
from provisiond import kernels, users
from provisiond.app import build_context
from provisiond.cli import main
from provisiond.db import Database
from provisiond.errors import ProvisiondError
from tests.conftest import write_config
from web import create_app

#: (name, version, cmdline) -> None (accepted) or the field a refusal names;
#: accepted names are unique (one database per side for the module)
CASES = [
    ("debian-12", "6.1.0", "console=ttyS0", None),
    ("k6.1_rt", "", "", None),
    ("-rf", "", "", "name"),  # looked like an option; names a directory
    ("..", "", "", "name"),
    (".hidden", "", "", "name"),
    ("has space", "", "", "name"),
    ("a/b", "", "", "name"),
    ("x" * 129, "", "", "name"),
    ("ok", "1 2", "", None),
    ("v1", "6.1\nchain http://evil/", "", "version"),
    ("c1", "", "quiet\nshell", "cmdline"),
    ("c2", "", "root=/dev/sda ${evil}", "cmdline"),
]


@pytest.fixture(scope="module")
def rest(tmp_path_factory):
    ctx = build_context(configmod.load(write_config(tmp_path_factory.mktemp("rest"))))
    ctx.db.migrate()
    with ctx.db.transaction() as s:
        user = users.create(s, "admin", "correct horse battery", "admin", "test")
        _, secret = users.create_token(s, user, "t", "test")
    client = create_app(ctx).test_client()

    def post(name: str, version: str, cmdline: str):
        body = {"name": name, "kernel_path": f"kernels/{name}/vmlinuz", "version": version,
                "cmdline": cmdline}  # fmt: skip
        resp = client.post("/api/v1/kernels", json=body,
                           headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
        return resp.status_code, resp.get_json() or {}

    yield post
    ctx.db.dispose()


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    config = write_config(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config), "init"]).exit_code == 0
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"kernel")

    def add(name: str, version: str, cmdline: str):
        args = ["--config", str(config), "kernel", "add", "--kernel", str(vmlinuz)]
        args += [*(["--cmdline", cmdline] if cmdline else []), "--", name]
        if version:  # `kernel add` has no --version: the function behind it takes one
            cfg = configmod.load(config)
            try:
                kernels.add(cfg, Database(cfg.database_url), name, vmlinuz, None, cmdline,
                            version=version)  # fmt: skip
            except ProvisiondError as exc:
                return 1, str(exc)
            return 0, ""
        result = runner.invoke(main, args)
        return result.exit_code, result.output

    return add


@pytest.mark.parametrize(("name", "version", "cmdline", "field"), CASES)
def test_rest_and_cli_agree(rest, cli, name, version, cmdline, field):
    status, body = rest(name, version, cmdline)
    code, output = cli(name, version, cmdline)
    if field is None:
        assert status == 201, body
        assert code == 0, output
    else:
        assert status == 400 and body.get("field") == field, body
        assert code != 0, output
        assert body["error"] in output or field in output, (body, output)
