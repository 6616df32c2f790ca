"""CLI: install templates (``template list|show|render``) and root file systems (``rootfs``)."""

from __future__ import annotations

import click

from provisiond import installs, rootfs
from provisiond.cli.base import Env, emit, handle_errors, json_option, main
from provisiond.cli.work import _params
from provisiond.templating import Renderer


def renderer(env: Env) -> Renderer:
    return Renderer(env.config.templates_dir / "install")


@main.group("template")
def template_group() -> None:
    """Install templates: list, show the source, render for a resource."""


@template_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def template_list(env: Env, as_json: bool) -> None:
    """List install template sets (kickstart, preseed, autoinstall, unattend, FAI)."""
    rows = [
        {"name": t.name, "kind": t.kind, "files": len(t.files), "answer": t.answer,
         "description": t.description}
        for t in renderer(env).sets()
    ]  # fmt: skip
    emit(as_json, rows, ["name", "kind", "files", "answer", "description"])


def _print_files(files: dict[str, str]) -> None:
    for path, text in files.items():
        click.echo(f"==> {path} <==")
        click.echo(text, nl=not text.endswith("\n"))


@template_group.command("show")
@click.argument("name")
@json_option
@click.pass_obj
@handle_errors
def template_show(env: Env, name: str, as_json: bool) -> None:
    """The template text of a set (NAME) or of one file (SET/PATH)."""
    source = renderer(env).source(name)
    emit(True, source) if as_json else _print_files({f"{p}.j2": t for p, t in source.items()})


@template_group.command("render")
@click.argument("name")
@click.option("--resource", "resource_ref", required=True, help="resource name, MAC, IP or id")
@click.option(
    "--param", "params", multiple=True, help="KEY=VALUE over the appliance's (repeatable)"
)
@json_option
@click.pass_obj
@handle_errors
def template_render(env: Env, name: str, resource_ref: str, params, as_json: bool) -> None:
    """Print exactly what the machine would get (the one-time token is a placeholder)."""
    overrides = _params(params)
    ref = rootfs.lookup(overrides.get("rootfs", installs.DEFAULTS["rootfs"]))
    with env.db.sessions() as s:
        out = installs.preview(s, env.config, renderer(env), name, resource_ref, overrides, ref)
    if as_json:
        emit(True, out)
        return
    if out["cmdline"]:
        click.echo(f"==> kernel command line <==\n{out['cmdline']}")
    _print_files(out["files"])


@main.group("rootfs")
def rootfs_group() -> None:
    """Root file systems for FAI-style installs (built with mmdebstrap, cached)."""


@rootfs_group.command("build")
@click.argument("name", type=click.Choice(sorted(rootfs.RECIPES)))
@click.option("--force", is_flag=True, help="rebuild even when the cache holds these inputs")
@handle_errors
def rootfs_build(name: str, force: bool) -> None:
    """Build NAME once per set of inputs (cache: $PROVISIOND_ROOTFS_CACHE or /var/cache)."""
    rootfs.build(name, say=click.echo, force=force)


@rootfs_group.command("list")
@json_option
@handle_errors
def rootfs_list(as_json: bool) -> None:
    """List root file-system recipes and whether each is built."""
    rows = []
    for name in sorted(rootfs.RECIPES):
        ref = rootfs.lookup(name)
        rows.append({"name": name, "built": bool(ref), "size": ref.size if ref else None,
                     "sha256": ref.sha256 if ref else ""})  # fmt: skip
    emit(as_json, rows, ["name", "built", "size", "sha256"])
