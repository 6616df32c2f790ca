"""CLI: N-to-1 high availability -- spares of HA pools, status, OS reporter tokens."""

from __future__ import annotations

import click

from provisiond import hapools, lookup, resources
from provisiond.cli.base import ACTOR, Env, emit, handle_errors, json_option, main
from provisiond.model import Appliance


@main.group("ha")
def ha_group() -> None:
    """N-to-1 failover: HA appliances fail over onto idle spares of their pool."""


@ha_group.command("spare")
@click.argument("resource_ref")
@click.option("--pool", required=True, help="HA pool name; '' removes the resource from its pool")
@click.pass_obj
@handle_errors
def ha_spare(env: Env, resource_ref: str, pool: str) -> None:
    """Make RESOURCE a spare of an HA pool (it takes over while it is idle)."""
    with env.db.transaction() as s:
        res = resources.find(s, resource_ref)
        hapools.set_pool(s, res, pool or None, ACTOR)
        name = res.display_name
    click.echo(f"{name}: spare of HA pool {pool}" if pool else f"{name}: in no HA pool")


@ha_group.command("status")
@json_option
@click.pass_obj
@handle_errors
def ha_status(env: Env, as_json: bool) -> None:
    """HA appliances (state, reason, last failover) and the spares of each pool."""
    with env.db.reader() as s:
        data = hapools.status(s)
    if as_json:
        emit(True, data)
        return
    cols = ["name", "resource", "state", "ha_pool", "ha_state", "ha_failover_at", "ha_reason"]
    emit(False, data["appliances"], cols)
    click.echo("")
    emit(False, data["spares"], ["name", "ha_pool", "state", "appliance", "standby"])


@ha_group.command("token")
@click.argument("appliance_ref")
@click.pass_obj
@handle_errors
def ha_token(env: Env, appliance_ref: str) -> None:
    """A new heartbeat token for the appliance's OS reporter (printed once)."""
    with env.db.transaction() as s:
        app = lookup.find(s, Appliance, appliance_ref)
        if not app.ha:
            raise click.UsageError(f"appliance '{app.name}' has no HA; create it with --ha")
        token = hapools.new_reporter_token(s, app, ACTOR)
    click.echo(token)
    click.echo(
        f"# the appliance's OS posts it every few seconds:\n# curl -fsS -X POST -H "
        f'"Authorization: Bearer $TOKEN" {env.config.http_base}/ha/v1/heartbeat',
        err=True,
    )
