"""CLI: the daemon's own commands — config check, init, serve, initrd build."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
from sqlalchemy import select

from provisiond import config as configmod
from provisiond import events, jobs, logs, present
from provisiond.cli.base import (
    ACTOR,
    Env,
    emit,
    handle_errors,
    json_option,
    main,
)
from provisiond.model import Event, Job, User

# ---------------------------------------------------------------------------
# config, init, serve


@main.group("config")
def config_group() -> None:
    """Inspect the configuration file."""


@config_group.command("check")
@click.argument("path", required=False)
@click.pass_obj
def config_check(env: Env, path: str | None) -> None:
    """Validate a configuration file (default: the active one)."""
    target = Path(path) if path else configmod.resolve_path(env._flag)
    try:
        cfg = configmod.load(target)
    except configmod.ConfigError as exc:
        raise click.ClickException(f"{target}: {exc}")
    modes = ", ".join(f"{s.cidr} ({s.mode})" for s in cfg.subnets) or "none"
    click.echo(
        f"{target}: OK (address {cfg.address}, http {cfg.http_port}, agent {cfg.agent_port}, "
        f"subnets: {modes})"
    )


@main.command()
@click.pass_obj
@handle_errors
def init(env: Env) -> None:
    """Create the state directory, database, admin user and SSH key (safe to re-run)."""
    from provisiond import assets
    from provisiond.security import (
        ensure_ssh_keypair,
        hash_password,
        new_password,
        private_state,
    )
    from provisiond.storages import StorageManager

    cfg = env.config
    private_state(cfg.state_dir, cfg.sqlite_path)
    cfg.boot_assets_dir.mkdir(parents=True, exist_ok=True)
    env.db.migrate(cfg.state_dir)
    with env.db.transaction() as s:
        if s.scalars(select(User).where(User.name == "admin")).first() is None:
            password = new_password()
            s.add(User(name="admin", password_hash=hash_password(password), role="admin"))
            events.record(s, ACTOR, "user.created", "admin", "role admin")
            click.echo(f"admin password (shown once, store it now): {password}")
        else:
            click.echo("admin user exists (password unchanged)")
        manager = StorageManager(cfg)
        manager.prepare()
        manager.sync_rows(s)
    if ensure_ssh_keypair(cfg.ssh_key_path):
        click.echo(f"SSH key pair written: {cfg.ssh_key_path} (0600)")
    else:
        click.echo(f"SSH key pair exists: {cfg.ssh_key_path} (kept)")
    _init_tls(cfg)
    missing = assets.install_ipxe(cfg.boot_assets_dir)
    if missing:
        click.echo(f"warning: iPXE binaries missing: {', '.join(missing)} (apt-get install ipxe)")
    click.echo(f"initialised {cfg.state_dir} (database {_safe_url(cfg.database_url)})")


def _init_tls(cfg: configmod.Config) -> None:
    """HTTPS for the UI/API: make a self-signed pair unless the config names one; check it."""
    from provisiond.security import check_tls_pair, ensure_tls_pair

    if not cfg.http.tls:
        return
    if cfg.http.tls_cert is None and ensure_tls_pair(
        cfg.tls_cert_path, cfg.tls_key_path, str(cfg.address)
    ):
        click.echo(f"self-signed TLS certificate written: {cfg.tls_cert_path} (key 0600)")
    try:
        fingerprint = check_tls_pair(cfg.tls_cert_path, cfg.tls_key_path)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"TLS certificate {cfg.tls_cert_path}, fingerprint {fingerprint}")
    click.echo(f"UI and API: {cfg.ui_base}/ (boot path stays on {cfg.http_base})")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@main.command()
@click.pass_obj
def serve(env: Env) -> None:
    """Run the daemon (DHCP, TFTP, DNS, HTTP, scheduler) until SIGTERM."""
    from provisiond.app import serve as run

    try:
        cfg = env.config
    except configmod.ConfigError as exc:
        raise click.ClickException(str(exc))
    logs.setup(cfg.log_level)
    sys.exit(run(cfg))


@main.command("systemd-unit")
@click.option("--exec", "exec_path", default=None,
              help="provisiond executable for ExecStart (default: this one)")  # fmt: skip
@click.option("--config-path", default=None, help="config file for ExecStart (default: --config)")
@click.pass_obj
def systemd_unit(env: Env, exec_path: str | None, config_path: str | None) -> None:
    """Print the systemd unit (provisiond.service) for this installation."""
    from provisiond import shipped

    exe = exec_path or shutil.which(sys.argv[0]) or str(Path(sys.argv[0]).resolve())
    cfg = config_path or str(configmod.resolve_path(env._flag))
    text = shipped.systemd_unit(str(Path(exe).absolute()), str(Path(cfg).absolute()))
    click.echo(text, nl=False)


# ---------------------------------------------------------------------------
# jobs, events


@main.group("job")
def job_group() -> None:
    """Long work: deploys, captures, commands."""


@job_group.command("list")
@click.option("--state", help="only jobs in this state")
@json_option
@click.pass_obj
@handle_errors
def job_list(env: Env, state: str | None, as_json: bool) -> None:
    """List jobs (deploys, captures, erases, imports), newest first."""
    with env.db.transaction() as s:
        q = select(Job).order_by(Job.id.desc()).limit(200)
        if state:
            q = q.where(Job.state == state)
        rows = [present.job(j) for j in s.scalars(q)]
    emit(as_json, rows, ["id", "kind", "state", "resource_id", "percent", "outcome"])


@job_group.command("show")
@click.argument("job_id", type=int)
@json_option
@click.pass_obj
@handle_errors
def job_show(env: Env, job_id: int, as_json: bool) -> None:
    """Show one job: state, progress, log and outcome."""
    with env.db.transaction() as s:
        job = jobs.get(s, job_id)
        data = {**present.job(job), "log": job.log}
    emit(as_json, data)


@main.group("event")
def event_group() -> None:
    """The audit trail."""


@event_group.command("list")
@click.option("--limit", default=50, show_default=True)
@json_option
@click.pass_obj
@handle_errors
def event_list(env: Env, limit: int, as_json: bool) -> None:
    """List the latest inventory events (who changed what, when)."""
    with env.db.transaction() as s:
        q = select(Event).order_by(Event.id.desc()).limit(limit)
        rows = [present.event(e) for e in s.scalars(q)]
    emit(as_json, rows, ["at", "actor", "action", "target", "detail"])


# ---------------------------------------------------------------------------
# initrd, login, run


@main.group("initrd")
def initrd_group() -> None:
    """The idle-agent initrd."""


@initrd_group.command("build")
@click.option("--kernel-version", help="kernel release under /lib/modules (default: newest)")
@click.option("--name", default="agent", show_default=True, help="kernel record name")
@click.pass_obj
@handle_errors
def initrd_build(env: Env, kernel_version: str | None, name: str) -> None:
    """Build the busybox agent initrd and register it as the default kernel."""
    from provisiond import kernels

    kernels.build_agent(env.config, env.db, kernel_version, name, echo=click.echo)
