"""CLI: appliances, jobs and the audit trail."""

from __future__ import annotations

from collections.abc import Callable

import click
from sqlalchemy import select

from provisiond import appliances, installs, lookup, present, resources
from provisiond.cli.base import (
    ACTOR,
    Env,
    emit,
    handle_errors,
    json_option,
    main,
    wait_job,
    wait_option,
)
from provisiond.model import Appliance

# ---------------------------------------------------------------------------
# appliances


@main.group("appliance")
def appliance_group() -> None:
    """Resource + image + mode: create, start, stop, remove."""


@appliance_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def appliance_list(env: Env, as_json: bool) -> None:
    """List appliances with resource, image, mode and state."""
    with env.db.transaction() as s:
        rows = [present.appliance(a) for a in s.scalars(select(Appliance).order_by(Appliance.id))]
    emit(as_json, rows, ["id", "name", "resource", "image", "mode", "state"])


@appliance_group.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
@handle_errors
def appliance_show(env: Env, ref: str, as_json: bool) -> None:
    """Show one appliance: resource, kernel, image, mode, parameters."""
    with env.db.transaction() as s:
        emit(as_json, present.appliance(lookup.find(s, Appliance, ref)))


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: write KEY=VALUE", param_hint="--param")
        out[key] = value
    return out


@appliance_group.command("create")
@click.option("--name", help="appliance name (default: app-<resource>)")
@click.option("--resource", "resource_ref", required=True, help="resource name, MAC, IP or id")
@click.option("--image", help="image name or id")
@click.option("--kernel", help="kernel name or id")
@click.option("--mode", type=click.Choice(appliances.MODES), required=True)
@click.option("--param", "params", multiple=True, help="KEY=VALUE (repeatable)")
@click.option("--disk", help="target disk for mode local, e.g. /dev/sda")
@click.option("--ha", is_flag=True, help="fail over onto a standby idle resource")
@click.option("--ha-pool", help="the HA pool whose idle spares it fails over onto (with --ha)")
@json_option
@click.pass_obj
@handle_errors
def appliance_create(
    env: Env, name, resource_ref, image, kernel, mode, params, disk, ha, ha_pool, as_json
):
    """Create an appliance: resource + image + mode (sanboot, local, template)."""
    extra = _params(params)
    if disk:
        extra["disk"] = disk
    with env.db.transaction() as s:
        res = resources.find(s, resource_ref)
        app = appliances.create(
            s,
            name=name or f"app-{res.display_name}",
            resource=res,
            mode=mode,
            image=image,
            kernel=kernel,
            params=installs.protect_params(extra, env.config.state_dir),
            ha=ha,
            ha_pool=ha_pool,
            actor=ACTOR,
        )
        data = present.appliance(app)
    emit(as_json, data) if as_json else click.echo(f"created appliance {data['name']}")


def _appliance_action(env: Env, ref: str, action: Callable, wait: bool) -> None:
    with env.db.transaction() as s:
        app = lookup.find(s, Appliance, ref)
        job = action(s, app, ACTOR)
        name, job_id = app.name, job.id
    click.echo(f"appliance {name}: {app.state} (job {job_id}; `provisiond job show {job_id}`)")
    if wait:
        wait_job(env, job_id)


@appliance_group.command("start")
@click.argument("ref")
@wait_option
@click.pass_obj
@handle_errors
def appliance_start(env: Env, ref: str, wait: bool) -> None:
    """Deploy the appliance onto its resource (a job run by the daemon)."""
    _appliance_action(env, ref, appliances.start, wait)


@appliance_group.command("stop")
@click.argument("ref")
@wait_option
@click.pass_obj
@handle_errors
def appliance_stop(env: Env, ref: str, wait: bool) -> None:
    """Stop an appliance: its resource is released back to idle."""
    _appliance_action(env, ref, appliances.stop, wait)


@appliance_group.command("rm")
@click.argument("ref")
@click.option("--keep-volume", is_flag=True, help="keep the appliance's clone")
@click.pass_obj
@handle_errors
def appliance_rm(env: Env, ref: str, keep_volume: bool) -> None:
    """Remove a stopped appliance (and its clone volume unless --keep-volume)."""
    from provisiond.storages import StorageManager

    manager = StorageManager(env.config)

    def delete_volume(vol) -> None:
        manager.backend(vol.storage.name).delete(vol.name)

    with env.db.transaction() as s:
        app = lookup.find(s, Appliance, ref)
        name = app.name
        appliances.remove(s, app, ACTOR, None if keep_volume else delete_volume)
    click.echo(f"removed appliance {name}" + (" (volume kept)" if keep_volume else ""))
