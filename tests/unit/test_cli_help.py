"""Every CLI command has help: a one-line summary in ``--help`` of its group, and its own page.

Table-driven over the whole command tree (walked from ``provisiond.cli.main``,
so a new command is covered without editing this file).
"""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from provisiond.cli import main


def commands(group: click.Group = main, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))


ALL = list(commands())


def test_the_tree_is_walked():
    names = {" ".join(p) for p, _ in ALL}
    assert {"serve", "init", "resource list", "appliance create", "initrd build"} <= names


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_command_has_a_one_line_help(path, cmd):
    summary = cmd.get_short_help_str(limit=120)
    assert summary.strip(), f"`provisiond {' '.join(path)}` has no help text: give it a docstring"
    assert "\n" not in summary
    res = CliRunner().invoke(main, [*path, "--help"], prog_name="provisiond")
    assert res.exit_code == 0, res.output
    assert "Usage: provisiond " + " ".join(path) in " ".join(res.output.split())
    parent = CliRunner().invoke(main, [*path[:-1], "--help"], prog_name="provisiond").output
    line = next((x for x in parent.splitlines() if x.strip().startswith(path[-1] + " ")), "")
    assert line.split(maxsplit=1)[1:], f"{path[-1]} is listed without its summary:\n{parent}"
