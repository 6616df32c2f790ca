"""CLI: a resource's power: ``resource power R on|off|cycle|status``, set-power, clear-power.

Passwords are read from a file (``--password-file``, or ``-`` for standard
input), never from the command line where ``ps`` and shell history show them.
"""

from __future__ import annotations

import json
import sys

import click

from provisiond import powerctl, resources
from provisiond.cli.base import ACTOR, Env, emit, handle_errors, json_option
from provisiond.cli.inventory import resource_group
from provisiond.power import PowerAction, PowerError


def _read_password(path: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()  # noqa: SIM115
    except OSError as exc:
        raise click.ClickException(f"cannot read the password file {path}: {exc.strerror}")
    return text.rstrip("\r\n")


def _options(pairs: tuple[str, ...]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.UsageError(f"--option {pair!r}: write it as key=value")
        try:
            out[key] = json.loads(value)  # numbers, true/false
        except ValueError:
            out[key] = value
    return out


@resource_group.command("power")
@click.argument("ref")
@click.argument("action", type=click.Choice([a.value for a in PowerAction]))
@json_option
@click.pass_obj
@handle_errors
def resource_power(env: Env, ref: str, action: str, as_json: bool) -> None:
    """Switch a machine on, off, power-cycle it, or read its power state (through its BMC)."""
    with env.db.reader() as s:
        res_id = resources.find(s, ref).id
    try:
        out = powerctl.act(env.config, env.db, res_id, action, ACTOR)
    except PowerError as exc:
        raise click.ClickException(f"{exc.kind}: {exc}")
    if as_json:
        emit(True, {"resource": out.resource, "action": out.action, "state": out.state.value})
    elif action == "status":
        click.echo(f"resource {out.resource}: power {out.state.value}")
    else:
        click.echo(f"resource {out.resource}: power {action} done {out.detail}")


@resource_group.command("set-power")
@click.argument("ref")
@click.option("--driver", required=True, help="ipmi, redfish or wol (qemu in the test bed)")
@click.option("--address", default="", help="BMC host[:port] or URL; wol: broadcast address")
@click.option("--user", default="", help="BMC user name")
@click.option("--password-file", help="file holding the BMC password ('-' = standard input)")
@click.option("--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
              help="driver option, e.g. cipher=17, verify_tls=false, port=6230")  # fmt: skip
@json_option
@click.pass_obj
@handle_errors
def resource_set_power(env: Env, ref: str, driver: str, address: str, user: str,
                       password_file: str | None, option_pairs: tuple[str, ...],
                       as_json: bool) -> None:  # fmt: skip
    """Store how to switch a machine (the password is sealed with the server key)."""
    password = _read_password(password_file) if password_file else None
    with env.db.transaction() as s:
        r = resources.find(s, ref)
        powerctl.set_power(s, env.config, r, driver, address, user, password,
                           _options(option_pairs), ACTOR)  # fmt: skip
        data = {"resource": r.display_name, **powerctl.describe(r)}
    if as_json:
        emit(True, data)
    else:
        where = f" at {data['address']}" if data["address"] else ""
        secret = ", password stored sealed" if data["password_set"] else ""
        click.echo(f"resource {data['resource']}: power driver {driver}{where}{secret}")


@resource_group.command("clear-power")
@click.argument("ref")
@click.pass_obj
@handle_errors
def resource_clear_power(env: Env, ref: str) -> None:
    """Forget a machine's power settings (and its sealed password)."""
    with env.db.transaction() as s:
        r = resources.find(s, ref)
        powerctl.clear_power(s, r, ACTOR)
        name = r.display_name
    click.echo(f"resource {name}: power settings removed")
