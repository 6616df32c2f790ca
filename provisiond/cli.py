"""The ``provisiond`` command line (click).

Owns argument parsing and presentation only: tables for people, ``--json``
for scripts. Every command loads the configuration once (``--config``, then
``$PROVISIOND_CONFIG``, then the default path) and calls the service modules;
errors are printed as one line naming the object and what to do, with exit
code 1 (2 for usage errors, as click does).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select

from provisiond import appliances, events, jobs, logs, present, resources
from provisiond import config as configmod
from provisiond.db import Database
from provisiond.errors import ProvisiondError
from provisiond.lifecycle import IllegalTransition
from provisiond.model import Appliance, Event, Image, Job, Kernel, Resource, User

ACTOR = f"cli:{os.environ.get('SUDO_USER') or os.environ.get('USER') or 'root'}"


# ---------------------------------------------------------------------------
# plumbing


class Env:
    def __init__(self, config_flag: str | None) -> None:
        self._flag = config_flag
        self._config: configmod.Config | None = None
        self._db: Database | None = None

    @property
    def config(self) -> configmod.Config:
        if self._config is None:
            self._config = configmod.load(configmod.resolve_path(self._flag))
        return self._config

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.database_url)
        return self._db


def handle_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ProvisiondError, configmod.ConfigError, IllegalTransition) as exc:
            raise click.ClickException(str(exc))

    return wrapper


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    rows = list(rows)
    if not rows:
        return "(none)"
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*(c.upper() for c in columns)), *(fmt.format(*row) for row in cells)]
    return "\n".join(line.rstrip() for line in lines)


def emit(as_json: bool, data: Any, columns: list[str] | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    elif isinstance(data, list):
        click.echo(table(data, columns or (list(data[0]) if data else [])))
    else:
        width = max(len(k) for k in data) if data else 0
        for key, value in data.items():
            if isinstance(value, dict | list):
                value = json.dumps(value, default=str)
            click.echo(f"{key:<{width}}  {value}")


class ProgressBar:
    """Bytes done, MB/s and ETA on one terminal line (plain lines when not a tty)."""

    def __init__(self, label: str) -> None:
        self.label, self.t0, self._last = label, time.monotonic(), 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last < (0.2 if self.tty else 5.0) and done < total:
            return
        self._last = now
        rate = done / max(now - self.t0, 1e-6)
        pct = 100.0 * done / total if total else 0.0
        eta = (total - done) / rate if rate and total else 0.0
        line = (f"{self.label}: {done / 2**20:8.1f}/{total / 2**20:.1f} MiB {pct:5.1f}% "
                f"{rate / 1e6:6.1f} MB/s ETA {eta:4.0f} s")  # fmt: skip
        click.echo(("\r" + line) if self.tty else line, err=True, nl=not self.tty)

    def done(self) -> None:
        if self.tty:
            click.echo("", err=True)


json_option = click.option("--json", "as_json", is_flag=True, help="machine-readable output")


@click.group()
@click.option("--config", "config_flag", envvar=None, help="path to provisiond.toml")
@click.pass_context
def main(ctx: click.Context, config_flag: str | None) -> None:
    """provisiond: network-boot, register and deploy bare-metal machines."""
    ctx.obj = Env(config_flag)


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
    click.echo(f"{target}: OK (address {cfg.address}, http {cfg.http_port}, subnets: {modes})")


@main.command()
@click.pass_obj
@handle_errors
def init(env: Env) -> None:
    """Create the state directory, database, admin user and SSH key (safe to re-run)."""
    from provisiond import assets
    from provisiond.security import ensure_ssh_keypair, hash_password, new_password
    from provisiond.storages import StorageManager

    cfg = env.config
    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    cfg.boot_assets_dir.mkdir(parents=True, exist_ok=True)
    env.db.migrate()
    with env.db.session() as s:
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
    missing = assets.install_ipxe(cfg.boot_assets_dir)
    if missing:
        click.echo(f"warning: iPXE binaries missing: {', '.join(missing)} (apt-get install ipxe)")
    click.echo(f"initialised {cfg.state_dir} (database {_safe_url(cfg.database_url)})")


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


# ---------------------------------------------------------------------------
# resources


@main.group("resource")
def resource_group() -> None:
    """Machines found by MAC: list, show, remove, release."""


@resource_group.command("list")
@click.option("--state", help="only resources in this state")
@json_option
@click.pass_obj
@handle_errors
def resource_list(env: Env, state: str | None, as_json: bool) -> None:
    with env.db.session() as s:
        q = select(Resource).order_by(Resource.id)
        if state:
            q = q.where(Resource.state == state)
        rows = [present.resource(r) for r in s.scalars(q)]
    emit(as_json, rows, ["id", "name", "mac", "ip", "state", "cpus", "memory_mib"])


@resource_group.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
@handle_errors
def resource_show(env: Env, ref: str, as_json: bool) -> None:
    with env.db.session() as s:
        r = resources.find(s, ref)
        data = present.resource(r, detail=True)
    emit(as_json, data)


@resource_group.command("rm")
@click.argument("ref")
@click.pass_obj
@handle_errors
def resource_rm(env: Env, ref: str) -> None:
    with env.db.session() as s:
        r = resources.find(s, ref)
        name = r.display_name
        resources.delete(s, r, ACTOR)
    click.echo(f"removed resource {name}")


@resource_group.command("release")
@click.argument("ref")
@click.option("--erase", type=click.Choice(["quick", "full"]), help="wipe the disks first")
@click.option("--wait", is_flag=True, help="follow the erase job until it ends")
@click.pass_obj
@handle_errors
def resource_release(env: Env, ref: str, erase: str | None, wait: bool) -> None:
    """Give a machine back to the idle pool (disks erased on request)."""
    from provisiond import release

    with env.db.session() as s:
        r = resources.find(s, ref)
        job = release.release(s, r, erase, ACTOR)
        name, job_id = r.display_name, job.id if job else None
    if job_id is None:
        click.echo(f"resource {name}: idle")
        return
    click.echo(f"resource {name}: releasing, erase {erase} (job {job_id})")
    if wait:
        _wait_job(env, job_id)


# ---------------------------------------------------------------------------
# images, kernels


@main.group("image")
def image_group() -> None:
    """Master images."""


@image_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def image_list(env: Env, as_json: bool) -> None:
    with env.db.session() as s:
        rows = [present.image(i) for i in s.scalars(select(Image).order_by(Image.id))]
    emit(as_json, rows, ["id", "name", "format", "size", "state"])


@image_group.command("import")
@click.argument("source")
@click.option("--name", required=True, help="image name")
@click.option("--storage", help="configured storage (default: the first)")
@click.pass_obj
@handle_errors
def image_import(env: Env, source: str, name: str, storage: str | None) -> None:
    """Import a raw or qcow2 file (or http(s) URL) as a master image."""
    from provisiond import images
    from provisiond.storages import StorageManager

    bar = ProgressBar(f"importing {name}")
    img = images.import_from(
        env.db, StorageManager(env.config), source, name, storage, ACTOR, echo=bar
    )
    bar.done()
    click.echo(f"imported image {img.name}: {img.size} bytes, sha256 {img.sha256}")


@image_group.command("capture")
@click.argument("resource_ref")
@click.option("--disk", required=True, help="disk of the resource, e.g. /dev/sda")
@click.option("--name", required=True, help="name of the new image")
@click.option("--storage", help="configured storage (default: the first)")
@click.option("--no-wait", is_flag=True, help="queue the capture and return")
@click.pass_obj
@handle_errors
def image_capture(env: Env, resource_ref: str, disk: str, name: str, storage, no_wait) -> None:
    """Upload a disk of an idle resource as a new image (the disk must not be in use)."""
    from provisiond import capture

    with env.db.session() as s:
        job = capture.capture(s, resources.find(s, resource_ref), disk, name, storage, ACTOR)
        job_id = job.id
    click.echo(f"capturing {disk} of {resource_ref} as image {name} (job {job_id})")
    if not no_wait:
        _wait_job(env, job_id)


@image_group.command("rm")
@click.argument("ref")
@click.pass_obj
@handle_errors
def image_rm(env: Env, ref: str) -> None:
    """Remove an image and its master volume (refused while clones exist)."""
    from provisiond import images
    from provisiond.storages import StorageManager

    with env.db.session() as s:
        img = images.find(s, ref)
        name = img.name
        images.remove(s, StorageManager(env.config), img, ACTOR)
    click.echo(f"removed image {name}")


@image_group.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
@handle_errors
def image_show(env: Env, ref: str, as_json: bool) -> None:
    with env.db.session() as s:
        img = appliances._by_name(s, Image, ref, "image")
        emit(as_json, present.image(img))


@main.group("kernel")
def kernel_group() -> None:
    """Kernels + initrds for network boot."""


@kernel_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def kernel_list(env: Env, as_json: bool) -> None:
    with env.db.session() as s:
        rows = [present.kernel(k) for k in s.scalars(select(Kernel).order_by(Kernel.id))]
    emit(as_json, rows, ["id", "name", "version", "kernel_path", "initrd_path", "is_default"])


@kernel_group.command("add")
@click.argument("name")
@click.option("--kernel", "kernel_file", required=True, type=click.Path(dir_okay=False))
@click.option("--initrd", "initrd_file", type=click.Path(dir_okay=False))
@click.option("--cmdline", default="", help="extra kernel arguments")
@click.option("--default", "make_default", is_flag=True, help="boot idle resources with it")
@click.pass_obj
@handle_errors
def kernel_add(env: Env, name, kernel_file, initrd_file, cmdline, make_default) -> None:
    """Register a kernel (+ initrd), copied into the boot assets."""
    from provisiond import kernels

    kernels.add(env.config, env.db, name, Path(kernel_file),
                Path(initrd_file) if initrd_file else None, cmdline, make_default)  # fmt: skip
    click.echo(f"kernel {name} added" + (" (default)" if make_default else ""))


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
    with env.db.session() as s:
        rows = [appliances.as_dict(a) for a in s.scalars(select(Appliance).order_by(Appliance.id))]
    emit(as_json, rows, ["id", "name", "resource", "image", "mode", "state"])


@appliance_group.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
@handle_errors
def appliance_show(env: Env, ref: str, as_json: bool) -> None:
    with env.db.session() as s:
        emit(as_json, appliances.as_dict(appliances.find(s, ref)))


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
@json_option
@click.pass_obj
@handle_errors
def appliance_create(env: Env, name, resource_ref, image, kernel, mode, params, disk, ha, as_json):
    extra = _params(params)
    if disk:
        extra["disk"] = disk
    with env.db.session() as s:
        res = resources.find(s, resource_ref)
        app = appliances.create(
            s,
            name=name or f"app-{res.display_name}",
            resource=res,
            mode=mode,
            image=image,
            kernel=kernel,
            params=extra,
            ha=ha,
            actor=ACTOR,
        )
        data = appliances.as_dict(app)
    emit(as_json, data) if as_json else click.echo(f"created appliance {data['name']}")


def _appliance_action(env: Env, ref: str, action: Callable, wait: bool) -> None:
    with env.db.session() as s:
        app = appliances.find(s, ref)
        job = action(s, app, ACTOR)
        name, job_id = app.name, job.id
    click.echo(f"appliance {name}: {app.state} (job {job_id}; `provisiond job show {job_id}`)")
    if wait:
        _wait_job(env, job_id)


def _wait_job(env: Env, job_id: int, timeout: float = 3600) -> None:
    """Follow a job's log and progress until it ends; exit 1 if it failed."""
    shown, deadline = 0, time.monotonic() + timeout
    bar = ProgressBar(f"job {job_id}")
    while time.monotonic() < deadline:
        with env.db.session() as s:
            job = jobs.get(s, job_id)
            lines = job.log.splitlines()
            state, outcome = job.state, job.outcome
            done, total = job.bytes_done, job.bytes_total
        for line in lines[shown:]:
            click.echo(f"  {line}")
        shown = len(lines)
        if total and state == "running":
            bar(done, total)
        if state in ("succeeded", "failed", "cancelled"):
            bar.done() if total else None
            if state != "succeeded":
                raise click.ClickException(f"job {job_id} {state}: {outcome}")
            return
        time.sleep(0.5)
    raise click.ClickException(f"job {job_id} still running after {timeout:.0f} s")


wait_option = click.option("--wait", is_flag=True, help="follow the job until it ends")


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
    _appliance_action(env, ref, appliances.stop, wait)


@appliance_group.command("rm")
@click.argument("ref")
@click.option("--keep-volume", is_flag=True, help="keep the appliance's clone")
@click.pass_obj
@handle_errors
def appliance_rm(env: Env, ref: str, keep_volume: bool) -> None:
    from provisiond.storages import StorageManager

    manager = StorageManager(env.config)

    def delete_volume(vol) -> None:
        manager.backend(vol.storage.name).delete(vol.name)

    with env.db.session() as s:
        app = appliances.find(s, ref)
        name = app.name
        appliances.remove(s, app, ACTOR, None if keep_volume else delete_volume)
    click.echo(f"removed appliance {name}" + (" (volume kept)" if keep_volume else ""))


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
    with env.db.session() as s:
        q = select(Job).order_by(Job.id.desc()).limit(200)
        if state:
            q = q.where(Job.state == state)
        rows = [jobs.as_dict(j) for j in s.scalars(q)]
    emit(as_json, rows, ["id", "kind", "state", "resource_id", "percent", "outcome"])


@job_group.command("show")
@click.argument("job_id", type=int)
@json_option
@click.pass_obj
@handle_errors
def job_show(env: Env, job_id: int, as_json: bool) -> None:
    with env.db.session() as s:
        job = jobs.get(s, job_id)
        data = {**jobs.as_dict(job), "log": job.log}
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
    with env.db.session() as s:
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


def _remote_target(env: Env, ref: str) -> tuple[str, str, str]:
    with env.db.session() as s:
        r = resources.find(s, ref)
        if not r.ip:
            raise ProvisiondError(f"resource {r.display_name} has no known IP address yet")
        return r.display_name, r.ip, r.hostkey or ""


@main.command()
@click.argument("ref")
@click.pass_obj
@handle_errors
def login(env: Env, ref: str) -> None:
    """Open an interactive root shell on an idle resource (pinned host key)."""
    from provisiond import remote

    name, ip, hostkey = _remote_target(env, ref)
    with env.db.session() as s:
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
    with env.db.session() as s:
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


if __name__ == "__main__":  # pragma: no cover
    main()
