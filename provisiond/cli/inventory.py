"""CLI: the inventory — resources, images, kernels."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

from provisiond import lookup, present, resources
from provisiond.cli.base import (
    ACTOR,
    Env,
    ProgressBar,
    emit,
    handle_errors,
    json_option,
    main,
    wait_job,
)
from provisiond.model import Image, Kernel, Resource


@main.group("resource")
def resource_group() -> None:
    """Machines found by MAC: list, show, remove, release."""


@resource_group.command("list")
@click.option("--state", help="only resources in this state")
@json_option
@click.pass_obj
@handle_errors
def resource_list(env: Env, state: str | None, as_json: bool) -> None:
    """List resources (machines found by MAC) with state and address."""
    with env.db.transaction() as s:
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
    """Show one resource: hardware inventory, state, appliance."""
    with env.db.transaction() as s:
        r = resources.find(s, ref)
        data = present.resource(r, detail=True)
    emit(as_json, data)


@resource_group.command("rm")
@click.argument("ref")
@click.pass_obj
@handle_errors
def resource_rm(env: Env, ref: str) -> None:
    """Remove a resource record (refused while an appliance uses it)."""
    with env.db.transaction() as s:
        r = resources.find(s, ref)
        name = r.display_name
        resources.delete(s, r, ACTOR)
    click.echo(f"removed resource {name}")


@resource_group.command("accept-key")
@click.argument("ref")
@click.pass_obj
@handle_errors
def resource_accept_key(env: Env, ref: str) -> None:
    """Trust the new host key a key-changed resource presented (like known_hosts)."""
    with env.db.transaction() as s:
        r = resources.accept_key(s, resources.find(s, ref), ACTOR)
        name, fp = r.display_name, r.hostkey_fingerprint
    click.echo(f"resource {name}: host key {fp} accepted; idle")


@resource_group.command("enroll")
@click.argument("mac")
@json_option
@click.pass_obj
@handle_errors
def resource_enroll(env: Env, mac: str, as_json: bool) -> None:
    """Issue an agent token for MAC by hand (a machine that does not PXE-boot here)."""
    cfg = env.config
    with env.db.transaction() as s:
        r, token = resources.enroll(s, mac, cfg.agent.hostkey_pinning, ACTOR)
        name = r.display_name
    args = (f"provisiond.url={cfg.http_base} provisiond.agent={cfg.agent_base} "
            f"provisiond.token={token} BOOTIF=01-{r.mac.replace(':', '-')}")  # fmt: skip
    emit(as_json, {"resource": name, "token": token, "kernel_args": args})


@resource_group.command("release")
@click.argument("ref")
@click.option("--erase", type=click.Choice(["quick", "full"]), help="wipe the disks first")
@click.option("--wait", is_flag=True, help="follow the erase job until it ends")
@click.pass_obj
@handle_errors
def resource_release(env: Env, ref: str, erase: str | None, wait: bool) -> None:
    """Give a machine back to the idle pool (disks erased on request)."""
    from provisiond import release

    with env.db.transaction() as s:
        r = resources.find(s, ref)
        job = release.release(s, r, erase, ACTOR)
        name, job_id = r.display_name, job.id if job else None
    if job_id is None:
        click.echo(f"resource {name}: idle")
        return
    click.echo(f"resource {name}: releasing, erase {erase} (job {job_id})")
    if wait:
        wait_job(env, job_id)


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
    """List images with their storage, size and state."""
    with env.db.transaction() as s:
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
@click.option("--transport", type=click.Choice(["tcp", "http"]), default="tcp", show_default=True,
              help="tcp: framed streams, used blocks only; http: a PUT per chunk")  # fmt: skip
@click.option("--workers", type=click.IntRange(1, 16), default=3, show_default=True,
              help="parallel streams (tcp)")  # fmt: skip
@click.pass_obj
@handle_errors
def image_capture(
    env: Env, resource_ref: str, disk: str, name: str, storage, no_wait, transport, workers
) -> None:
    """Upload a disk of an idle resource as a new image (the disk must not be in use)."""
    from provisiond import capture

    with env.db.transaction() as s:
        job = capture.capture(s, resources.find(s, resource_ref), disk, name, storage, ACTOR,
                              transport=transport, workers=workers)  # fmt: skip
        job_id = job.id
    click.echo(f"capturing {disk} of {resource_ref} as image {name} (job {job_id})")
    if not no_wait:
        wait_job(env, job_id)


@image_group.command("rm")
@click.argument("ref")
@click.pass_obj
@handle_errors
def image_rm(env: Env, ref: str) -> None:
    """Remove an image and its master volume (refused while clones exist)."""
    from provisiond import images
    from provisiond.storages import StorageManager

    with env.db.transaction() as s:
        img = lookup.find(s, Image, ref)
        name = img.name
        images.remove(s, StorageManager(env.config), img, ACTOR)
    click.echo(f"removed image {name}")


@image_group.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
@handle_errors
def image_show(env: Env, ref: str, as_json: bool) -> None:
    """Show one image: storage, volume, size, clones."""
    with env.db.transaction() as s:
        img = lookup.find(s, Image, ref)
        emit(as_json, present.image(img))


@main.group("kernel")
def kernel_group() -> None:
    """Kernels + initrds for network boot."""


@kernel_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def kernel_list(env: Env, as_json: bool) -> None:
    """List network-boot kernels; the default boots idle resources."""
    with env.db.transaction() as s:
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
# storages: declared in the configuration (provisiond.storages), listed here


@main.group("storage")
def storage_group() -> None:
    """Storages declared in the configuration ([[storage]]): list them."""


@storage_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def storage_list(env: Env, as_json: bool) -> None:
    """List the declared storages (edit [[storage]] in the config file to change them)."""
    from provisiond import storages

    with env.db.reader() as s:
        rows = [present.declared_storage(d) for d in storages.declared(env.config, s)]
    emit(as_json, rows, ["name", "backend", "path", "exporter", "host", "host_state", "declared"])
