"""CLI: root shells and one-off commands on idle resources (``login``, ``run``)."""

from __future__ import annotations

import sys

import click

from provisiond import events, resources
from provisiond.cli.base import (
    ACTOR,
    Env,
    handle_errors,
    main,
)


def _remote_target(env: Env, ref: str) -> tuple[str, str, str]:
    with env.db.transaction() as s:
        return resources.remote_target(resources.find(s, ref))


@main.command()
@click.argument("ref")
@click.pass_obj
@handle_errors
def login(env: Env, ref: str) -> None:
    """Open an interactive root shell on an idle resource (pinned host key)."""
    from provisiond import remote

    name, ip, hostkey = _remote_target(env, ref)
    with env.db.transaction() as s:
        events.record(s, ACTOR, "resource.login", name, f"ssh root@{ip}")
    try:
        client = remote.connect(ip, hostkey, env.config.ssh_key_path)
    except remote.RemoteError as exc:
        raise click.ClickException(str(exc))
    try:
        sys.exit(remote.interactive(client))
    finally:
        client.close()


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("ref")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@handle_errors
def run(env: Env, ref: str, command: tuple[str, ...]) -> None:
    """Run one command on an idle resource: provisiond run R -- CMD ..."""
    from provisiond import remote

    name, ip, hostkey = _remote_target(env, ref)
    cmd = " ".join(command)
    with env.db.transaction() as s:
        events.record(s, ACTOR, "resource.run", name, cmd)
    try:
        client = remote.connect(ip, hostkey, env.config.ssh_key_path)
        try:
            code, output = remote.run(client, cmd)
        finally:
            client.close()
    except remote.RemoteError as exc:
        raise click.ClickException(str(exc))
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    sys.exit(code)
