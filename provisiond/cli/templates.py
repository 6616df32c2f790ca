"""CLI: install templates (``template list|show|render``) and root file systems (``rootfs``)."""

from __future__ import annotations

import click

from provisiond import installs, rootfs, templatestore
from provisiond.cli.base import ACTOR, Env, emit, handle_errors, json_option, main
from provisiond.cli.work import _params
from provisiond.templating import KINDS, Renderer


def renderer(env: Env) -> Renderer:
    return templatestore.renderer(env.config, env.db)


@main.group("template")
def template_group() -> None:
    """Install templates: list, show the source, render for a resource; store your own."""


@template_group.command("list")
@json_option
@click.pass_obj
@handle_errors
def template_list(env: Env, as_json: bool) -> None:
    """List install template sets (kickstart, preseed, autoinstall, unattend, FAI)."""
    rows = [
        {"name": t.name, "kind": t.kind, "files": len(t.files), "answer": t.answer,
         "origin": t.origin, "description": t.description}
        for t in renderer(env).sets()
    ]  # fmt: skip
    emit(as_json, rows, ["name", "kind", "origin", "files", "answer", "description"])


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
    with env.db.reader() as s:
        out = installs.preview(s, env.config, renderer(env), name, resource_ref, overrides, ref)
    if as_json:
        emit(True, out)
        return
    if out["cmdline"]:
        click.echo(f"==> kernel command line <==\n{out['cmdline']}")
    if out["initrds"]:
        click.echo("==> extra installer initrds <==\n" + "\n".join(out["initrds"]))
    _print_files(out["files"])


def _set_fields(name: str, source: str | None, kind, files, answer, cmdline, description) -> dict:
    """A stored set's fields from a directory (set.toml + *.j2) and/or options."""
    from pathlib import Path

    from provisiond.errors import Invalid

    fields = templatestore.read_dir(Path(source)) if source else {"files": {}}
    for item in files:
        path, sep, local = item.partition("=")
        if not sep or not path or not local:
            raise Invalid(f"--file {item!r}: write PATH=LOCAL_FILE, e.g. preseed.cfg=./p.cfg.j2",
                          field="files")  # fmt: skip
        try:
            fields["files"][path.strip()] = Path(local).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(f"--file {path}: cannot read {local}: {exc}", field="files") from None
    for key, value in (("kind", kind), ("answer", answer), ("cmdline", cmdline),
                       ("description", description)):  # fmt: skip
        if value is not None:
            fields[key] = value
    fields.setdefault("kind", "")
    return {"name": name, **fields}


def _store_options(fn):
    for opt in reversed([
        click.argument("name"),
        click.option("--from", "source", type=click.Path(exists=True, file_okay=False),
                     help="a directory laid out like a shipped set: set.toml + <file>.j2"),
        click.option("--kind", type=click.Choice(sorted(KINDS)), help="what the set drives"),
        click.option("--file", "files", multiple=True,
                     help="PATH=LOCAL_FILE: template text of output file PATH (repeatable)"),
        click.option("--answer", help="the file an installer fetches (installer kinds)"),
        click.option("--cmdline", help="the installer's kernel arguments (template text)"),
        click.option("--description", help="one line shown in `template list`"),
    ]):  # fmt: skip
        fn = opt(fn)
    return fn


@template_group.command("add")
@_store_options
@click.pass_obj
@handle_errors
def template_add(env: Env, name, source, kind, files, answer, cmdline, description) -> None:
    """Store a template set in the database (checked in the sandbox first)."""
    fields = _set_fields(name, source, kind, files, answer, cmdline, description)
    with env.db.transaction() as s:
        tset = templatestore.add(s, env.config, actor=ACTOR, **fields)
    click.echo(f"template {tset.name} stored ({tset.kind}, {len(tset.files)} files)")


@template_group.command("update")
@_store_options
@click.pass_obj
@handle_errors
def template_update(env: Env, name, source, kind, files, answer, cmdline, description) -> None:
    """Replace a stored template set (checked in the sandbox first)."""
    fields = _set_fields(name, source, kind, files, answer, cmdline, description)
    with env.db.transaction() as s:
        tset = templatestore.update(s, env.config, actor=ACTOR, **fields)
    click.echo(f"template {tset.name} updated ({tset.kind}, {len(tset.files)} files)")


@template_group.command("rm")
@click.argument("name")
@click.pass_obj
@handle_errors
def template_rm(env: Env, name: str) -> None:
    """Remove a stored template set (not while an appliance uses it)."""
    with env.db.transaction() as s:
        templatestore.remove(s, env.config, name, actor=ACTOR)
    click.echo(f"template {name} removed")


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
