"""Install template sets stored in the database, next to the shipped ones.

Owns saving, replacing and removing a *stored* set (the ``template`` table:
name, kind, description, ``files`` = template text by output path, and in
``params`` the installer's ``answer`` file, kernel ``cmdline`` and file
``modes``), and the :class:`~provisiond.templating.Renderer` that sees both
the shipped sets (``templates/install``) and the stored ones. CLI
(``template add|update|rm``), API (``POST|PUT|DELETE /api/v1/templates``) and
UI call these functions, so all three apply the same rules.

Checked at save time, before anything is stored:

- the name (one segment, not a shipped set's name), the kind, the file paths
  (relative, ``[a-z0-9._-]``, never ``..``), sizes, the answer file;
- every file and the command line parse in the same sandboxed Jinja2
  environment that renders them: a syntax error is refused with the file,
  the line and Jinja2's message;
- a trial render for a sample machine, with any parameter given a sample
  value: what the sandbox refuses (``{{ ''.__class__.__mro__ }}``) is refused
  now, not when a machine installs. A variable missing at install time is
  still caught at render time (``StrictUndefined``), before any reboot.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.model import Appliance, Resource, Template
from provisiond.modes import ApplianceMode as M
from provisiond.templating import (
    KINDS,
    Renderer,
    TemplateError,
    TemplateSet,
    check_name,
    format_for,
)

MAX_FILES = 64
MAX_FILE_BYTES = 256 * 1024
STORED_ROOT = Path("/nonexistent/provisiond-stored-templates")  # stored sets have no directory


def shipped_root(config: Config) -> Path:
    return config.templates_dir / "install"


def to_set(row: Template) -> TemplateSet:
    p = row.params or {}
    files = {str(k): str(v) for k, v in (row.files or {}).items()}
    return TemplateSet(
        name=row.name,
        kind=row.kind,
        description=row.description or "",
        root=STORED_ROOT,
        files=tuple(sorted(files)),
        answer=str(p.get("answer", "")),
        cmdline=str(p.get("cmdline", "")),
        modes={str(k): int(v) for k, v in (p.get("modes") or {}).items()},
        sources=files,
        initrds=tuple(str(i) for i in p.get("initrds") or ()),
    )


def stored_sets(session: Session) -> dict[str, TemplateSet]:
    rows = session.scalars(select(Template).where(Template.path == "")).all()
    return {r.name: to_set(r) for r in rows}


def renderer(config: Config, db: Database) -> Renderer:
    """The shipped sets and the stored ones, as they are in the database now."""
    with db.reader() as s:
        stored = stored_sets(s)
    return Renderer(shipped_root(config), stored)


# --- checks ---------------------------------------------------------------------


class _SampleParams(dict):
    """A trial render's parameters: any name has a sample value."""

    def __missing__(self, key: str) -> str:
        return "sample"


def _sample_variables(config: Config, name: str, answer: str) -> dict[str, Any]:
    from provisiond import installs

    res = Resource(id=0, mac="52:54:00:00:00:00", name="sample", ip="192.0.2.10", macs=None,
                   inventory={"disks": [{"name": "sda"}], "firmware": "bios"})  # fmt: skip
    v = installs.variables(config, res, None, name, {"hostname": "sample"}, answer=answer)
    v["params"] = _SampleParams(v["params"])
    return v


def _modes(raw: Any) -> dict[str, int]:
    if raw in (None, ""):
        return {}
    if not isinstance(raw, Mapping):
        raise Invalid('modes: a table of PATH = "0600"', field="modes")
    out = {}
    for path, mode in raw.items():
        check_name(str(path), "file mode path")
        try:
            value = int(str(mode), 8)
        except ValueError:
            value = -1
        if not 0 <= value <= 0o777:
            raise Invalid(f"mode of {path}: {mode!r} is not an octal mode like 0600", "modes")
        out[str(path)] = value
    return out


def check(
    config: Config,
    name: str,
    kind: str,
    files: Mapping[str, str],
    answer: str = "",
    cmdline: str = "",
    modes: Mapping[str, Any] | None = None,
    description: str = "",
    initrds: list[str] | tuple[str, ...] | None = None,
) -> TemplateSet:
    """The set as it would be stored, or Invalid naming what is wrong (nothing stored)."""
    check_name(name)
    if "/" in name:
        raise Invalid(f"template name {name!r}: one segment, no '/'", field="name")
    if kind not in KINDS:
        raise Invalid(f"kind {kind!r}: must be one of {', '.join(KINDS)}", field="kind")
    if not files:
        raise Invalid("a template set needs at least one file", field="files")
    if len(files) > MAX_FILES:
        raise Invalid(f"{len(files)} files: at most {MAX_FILES}", field="files")
    if len(description) > 1000 or "\n" in description:
        raise Invalid("description: one line, at most 1000 characters", field="description")
    clean: dict[str, str] = {}
    for path, text in files.items():
        path = str(path).removesuffix(".j2")
        check_name(path, "file path")
        if not isinstance(text, str):
            raise Invalid(f"file {path}: template text expected", field="files")
        if len(text.encode()) > MAX_FILE_BYTES:
            raise Invalid(f"file {path}: larger than {MAX_FILE_BYTES // 1024} KiB", "files")
        if "\0" in text:
            raise Invalid(f"file {path}: contains a NUL byte", field="files")
        clean[path] = text
    if answer and answer not in clean:
        raise Invalid(f"answer file {answer!r} is not one of the files ({', '.join(clean)})",
                      field="answer")  # fmt: skip
    if kind != "fai" and not answer:
        raise Invalid(f"a {kind} set is fetched by an installer: name its answer file "
                      "(answer=PATH)", field="answer")  # fmt: skip
    if "\n" in cmdline:
        raise Invalid("cmdline: one line of kernel arguments", field="cmdline")
    initrds = list(initrds or [])
    if len(initrds) > 8 or not all(isinstance(i, str) and "\n" not in i for i in initrds):
        raise Invalid("initrds: at most 8 one-line URL templates", field="initrds")
    tset = TemplateSet(name, kind, description, STORED_ROOT, tuple(sorted(clean)), answer,
                       cmdline, _modes(modes), clean, tuple(initrds))  # fmt: skip
    r = Renderer(shipped_root(config), {name: tset})
    try:
        for path, text in clean.items():
            r.check_source(f"{name}/{path}", text, format_for(path))
        if cmdline:
            r.check_source(f"{name}/cmdline", cmdline, "cmdline")
        for i, text in enumerate(initrds):
            r.check_source(f"{name}/initrds[{i}]", text, "cmdline")
        _trial_render(r, config, tset)
    except TemplateError as exc:
        raise Invalid(exc.message, field="files") from None
    return tset


def _trial_render(r: Renderer, config: Config, tset: TemplateSet) -> None:
    """Render once for a sample machine: only what the sandbox refuses is an error here."""
    variables = _sample_variables(config, tset.name, tset.answer)
    for path in tset.files:
        try:
            r.render_file(tset, path, variables)
        except TemplateError as exc:
            if "refused by the sandbox" in exc.message:
                raise
    for fn in (r.cmdline, r.initrd_urls):
        try:
            fn(tset, variables)
        except TemplateError as exc:
            if "refused by the sandbox" in exc.message:
                raise


# --- storing --------------------------------------------------------------------


def _row(session: Session, name: str) -> Template | None:
    return session.scalars(select(Template).where(Template.name == name)).first()


def _shipped_names(config: Config) -> set[str]:
    return {t.name for t in Renderer(shipped_root(config)).shipped()}


def _apply(row: Template, tset: TemplateSet) -> None:
    row.kind, row.description, row.path = tset.kind, tset.description, ""
    row.files = dict(tset.sources or {})
    row.params = {"answer": tset.answer, "cmdline": tset.cmdline, "initrds": list(tset.initrds),
                  "modes": {k: f"{v:04o}" for k, v in tset.modes.items()}}  # fmt: skip
    row.updated_at = dt.datetime.now(dt.UTC).replace(tzinfo=None)


def add(session: Session, config: Config, actor: str = "cli", **fields: Any) -> TemplateSet:
    """Store a new set (checked first); Conflict if the name is taken."""
    tset = check(config, **fields)
    if tset.name in _shipped_names(config):
        raise Conflict(f"template {tset.name!r} is a shipped set; pick another name", "name")
    if _row(session, tset.name) is not None:
        raise Conflict(f"template {tset.name!r} already exists; use `provisiond template "
                       "update` to replace it", field="name")  # fmt: skip
    row = Template(name=tset.name, kind=tset.kind, path="", params={})
    _apply(row, tset)
    session.add(row)
    session.flush()
    events.record(session, actor, "template.added", tset.name,
                  f"{tset.kind}, {len(tset.files)} files")  # fmt: skip
    return tset


def _stored(session: Session, config: Config, name: str) -> Template:
    check_name(name)
    row = _row(session, name)
    if row is None or row.path != "":
        if name in _shipped_names(config):
            raise Conflict(f"template {name!r} is shipped with provisiond and cannot be changed "
                           "here; store a copy under another name", field="name")  # fmt: skip
        raise NotFound(f"template {name!r} is not stored; see `provisiond template list`",
                       "template")  # fmt: skip
    return row


def update(session: Session, config: Config, actor: str = "cli", **fields: Any) -> TemplateSet:
    """Replace a stored set's files and settings (checked first)."""
    row = _stored(session, config, fields["name"])
    tset = check(config, **fields)
    _apply(row, tset)
    events.record(session, actor, "template.updated", tset.name,
                  f"{tset.kind}, {len(tset.files)} files")  # fmt: skip
    return tset


def users(session: Session, name: str) -> list[str]:
    """Appliances whose ``template`` parameter names this set."""
    apps = session.scalars(select(Appliance).where(Appliance.mode == M.TEMPLATE)).all()
    return sorted(a.name for a in apps if (a.params or {}).get("template") == name)


def remove(session: Session, config: Config, name: str, actor: str = "cli") -> None:
    row = _stored(session, config, name)
    using = users(session, name)
    if using:
        raise Conflict(
            f"template {name!r} is used by appliance(s) {', '.join(using)}; "
            "remove them or point them at another template first",
            field="template",
        )
    session.delete(row)
    events.record(session, actor, "template.removed", name, "")


def summary(tset: TemplateSet) -> dict[str, Any]:
    return {"name": tset.name, "kind": tset.kind, "description": tset.description,
            "files": list(tset.files), "answer": tset.answer, "origin": tset.origin}  # fmt: skip


def read_dir(path: Path) -> dict[str, Any]:
    """A set laid out like a shipped one: ``set.toml`` + ``<path>.j2`` files."""
    import tomllib

    meta_path = path / "set.toml"
    try:
        meta = tomllib.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"{meta_path}: {exc}") from None
    files = {}
    for f in sorted(path.rglob("*.j2")):
        if f.is_file():
            files[str(f.relative_to(path))[:-3]] = f.read_text()
    if not files:
        raise Invalid(f"{path}: no <file>.j2 template files found", field="files")
    return {"kind": meta.get("kind", ""), "description": meta.get("description", ""),
            "answer": meta.get("answer", ""), "cmdline": meta.get("cmdline", ""),
            "modes": meta.get("modes") or {}, "initrds": meta.get("initrds") or [],
            "files": files}  # fmt: skip
