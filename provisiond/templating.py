"""Install templates: sandboxed Jinja2 rendering with per-format escaping.

Owns turning a *template set* (a directory ``templates/install/<set>/``) plus
variables into the exact files a machine gets. Pure: no database, no sockets;
:mod:`provisiond.installs` gathers the variables.

A set holds ``set.toml`` (``kind``, ``description``, optional ``answer``: the
file an installer fetches, ``cmdline``: the installer's kernel arguments
template, ``[modes]``: file modes) and ``<path>.j2`` files, each rendering to
``<path>``. A file that renders to nothing but white space is left out, so a
template can make a file conditional (an ESP loader entry only for UEFI).

Safety rules (issue 12):

- :class:`jinja2.sandbox.SandboxedEnvironment`: template text cannot reach
  Python internals (``{{ ''.__class__ }}`` fails with :class:`TemplateError`);
- :class:`jinja2.StrictUndefined`: a missing variable is an error that names
  the template and the variable, raised at render time (before any reboot);
- names are relative, ``[a-z0-9._-]`` segments, never ``..``;
- every ``{{ value }}`` is escaped for the format of the file it lands in
  (chosen by the output file's name, :func:`format_for`): ``shell`` (single
  quoted), ``yaml`` (a JSON string, which YAML reads as a double-quoted
  scalar), ``xml`` (entities; characters XML 1.0 forbids refused),
  ``cmdline`` (one kernel/iPXE word: no spaces, control characters, ``;``,
  ``&&``, ``||``, quotes or ``${``) and ``text`` (one line: no control
  characters). The filters ``sh``, ``yaml``, ``xml``, ``cmdline`` and
  ``text`` escape explicitly for another format; ``verbatim`` is for values
  the template itself built from escaped parts.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as _xml_escape

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from provisiond.errors import Invalid, NotFound

KINDS = ("fai", "preseed", "autoinstall", "kickstart", "unattend")
_SEGMENT = re.compile(r"^[a-z0-9._-]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_XML_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_LINE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\"'`\\]|&&|\|\||\$\{")
_CMD_BAD = re.compile(r"[\x00-\x1f\x7f&|<>^%!\"]")
_CMDLINE_BAD = re.compile(r"[\x00-\x20\x7f;'\"`\\]|&&|\|\||\$\{")


class TemplateError(Invalid):
    """A template or a value cannot be rendered; the message names both."""


class Escaped(str):
    """Text already escaped for its format: printed as it is."""


# --- escaping ------------------------------------------------------------------


def _scalar(value: Any, what: str) -> str:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined (or the sandbox's unsafe attribute) raises here
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TemplateError(f"{what}: a {type(value).__name__} cannot be printed here; pick a field")


def esc_shell(value: Any) -> Escaped:
    text = _scalar(value, "shell value")
    if "\0" in text:
        raise TemplateError("shell value contains a NUL byte")
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", text):
        return Escaped(text)
    return Escaped("'" + text.replace("'", "'\"'\"'") + "'")


def esc_yaml(value: Any) -> Escaped:
    if isinstance(value, bool | int | float) or value is None:
        return Escaped(json.dumps(value))
    return Escaped(json.dumps(_scalar(value, "YAML value")))


def esc_xml(value: Any) -> Escaped:
    text = _scalar(value, "XML value")
    if _XML_BAD.search(text):
        raise TemplateError(f"XML value {text!r} contains characters XML 1.0 does not allow")
    return Escaped(_xml_escape(text, {'"': "&quot;", "'": "&apos;"}))


def esc_cmdline(value: Any) -> Escaped:
    text = _scalar(value, "kernel command line value")
    bad = _CMDLINE_BAD.search(text)
    if bad:
        raise TemplateError(
            f"kernel command line value {text!r} contains {bad.group()!r}: spaces, control "
            "characters, quotes, ';', '&&', '||' and '${' are refused there"
        )
    return Escaped(text)


def esc_cmd(value: Any) -> Escaped:
    """One argument of a Windows batch file (cmd.exe): its operators are refused."""
    text = _scalar(value, "batch file value")
    bad = _CMD_BAD.search(text)
    if bad:
        raise TemplateError(
            f"batch file value {text!r} contains {bad.group()!r}: control characters and "
            "cmd.exe's & | < > ^ % ! \" are refused there"
        )
    return Escaped(text)


def esc_text(value: Any) -> Escaped:
    text = _scalar(value, "value")
    if _CONTROL.search(text.replace("\t", " ")):
        raise TemplateError(
            f"value {text!r} contains a newline or control character (one line expected)"
        )
    return Escaped(text)


ESCAPERS: dict[str, Callable[[Any], Escaped]] = {
    "shell": esc_shell,
    "yaml": esc_yaml,
    "xml": esc_xml,
    "cmdline": esc_cmdline,
    "text": esc_text,
    "cmd": esc_cmd,
}


def format_for(path: str) -> str:
    """The escaping format of an output file, by its name."""
    name = path.rsplit("/", 1)[-1]
    if name.endswith((".sh", ".env", ".ks")) or name in ("kickstart", "ks.cfg"):
        return "shell"
    if name.endswith((".yaml", ".yml")) or name in ("user-data", "meta-data"):
        return "yaml"
    if name.endswith(".xml"):
        return "xml"
    if name == "cmdline" or name.endswith((".cmdline", ".ipxe")):
        return "cmdline"
    if name.endswith((".cmd", ".bat")):
        return "cmd"
    return "text"


def check_name(name: str, what: str = "template name") -> str:
    """A relative name of ``[a-z0-9._-]`` segments; absolute paths and ``..`` refused."""
    if not name or name.startswith("/") or "\\" in name:
        raise TemplateError(f"{what} {name!r}: must be a relative name like 'fai-debian-12'")
    parts = name.split("/")
    if any(p in (".", "..") or not _SEGMENT.match(p) for p in parts):
        raise TemplateError(
            f"{what} {name!r}: use lower-case letters, digits, '.', '_', '-' and '/' "
            "(no '..', no absolute paths)"
        )
    return name


# --- sets ----------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateSet:
    name: str
    kind: str
    description: str
    root: Path
    files: tuple[str, ...]  # output paths (template files without .j2), sorted
    answer: str = ""  # the file an installer fetches (installer kinds)
    cmdline: str = ""  # kernel arguments of the installer (template text)
    modes: Mapping[str, int] = field(default_factory=dict)
    #: template text by output path for a set stored in the database
    #: (:mod:`provisiond.templatestore`); None: read ``root/<path>.j2``
    sources: Mapping[str, str] | None = None
    #: extra initrds the installer boots with (template text of URLs, e.g. the answer
    #: file that wimboot injects into WinPE), after the Kernel's own
    initrds: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        return "shipped" if self.sources is None else "stored"


def _load_set(root: Path, name: str) -> TemplateSet:
    meta_path = root / "set.toml"
    try:
        meta = tomllib.loads(meta_path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TemplateError(f"template set {name}: {meta_path} is unreadable: {exc}")
    kind = meta.get("kind", "")
    if kind not in KINDS:
        raise TemplateError(f"template set {name}: kind {kind!r} must be one of {KINDS}")
    files = sorted(
        str(p.relative_to(root))[:-3] for p in root.rglob("*.j2") if p.is_file()
    )  # fmt: skip
    modes = {k: int(str(v), 8) for k, v in (meta.get("modes") or {}).items()}
    answer = meta.get("answer", "")
    if answer and answer not in files:
        raise TemplateError(f"template set {name}: answer file {answer!r} has no {answer}.j2")
    initrds = meta.get("initrds", [])
    if not isinstance(initrds, list) or not all(isinstance(i, str) for i in initrds):
        raise TemplateError(f"template set {name}: initrds must be a list of URL templates")
    return TemplateSet(name, kind, meta.get("description", ""), root, tuple(files), answer,
                       meta.get("cmdline", ""), modes, initrds=tuple(initrds))  # fmt: skip


class _SetLoader(jinja2.BaseLoader):
    """Loads ``<set>/<path>.j2`` under one root, or from a stored set's sources;
    include names are checked like set names."""

    def __init__(self, root: Path, stored: Mapping[str, TemplateSet]) -> None:
        self.root = root
        self.stored = stored

    def get_source(self, environment, template):
        check_name(template)
        set_name, _, rel = template.partition("/")
        stored = self.stored.get(set_name)
        if stored is not None and not (self.root / set_name / "set.toml").is_file():
            if rel not in (stored.sources or {}):
                raise jinja2.TemplateNotFound(template)
            return stored.sources[rel], f"<stored {template}>", lambda: False
        path = self.root / f"{template}.j2"
        if not path.is_file():
            raise jinja2.TemplateNotFound(template)
        text = path.read_text()
        mtime = path.stat().st_mtime
        return text, str(path), lambda: path.is_file() and path.stat().st_mtime == mtime


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    msg = str(exc)
    m = re.search(r"has no attribute '([^']+)'", msg) or re.search(r"'([^']+)' is undefined", msg)
    return m.group(1) if m else msg


class Renderer:
    """Renders template sets found under ``root`` (``templates/install``) and ``stored``
    ones (from the database; a shipped set of the same name wins)."""

    def __init__(self, root: Path, stored: Mapping[str, TemplateSet] | None = None) -> None:
        self.root = Path(root)
        self.stored = dict(stored or {})
        self._envs = {fmt: self._env(esc) for fmt, esc in ESCAPERS.items()}

    def _env(self, escape: Callable[[Any], Escaped]) -> SandboxedEnvironment:
        def finalize(value: Any) -> Any:
            return value if isinstance(value, Escaped) else escape(value)

        env = SandboxedEnvironment(
            loader=_SetLoader(self.root, self.stored),
            undefined=jinja2.StrictUndefined,
            finalize=finalize,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            autoescape=False,
        )
        for fmt, esc in ESCAPERS.items():
            env.filters["sh" if fmt == "shell" else fmt] = esc
        env.filters["verbatim"] = Escaped
        return env

    # -- discovery --

    def shipped(self) -> list[TemplateSet]:
        if not self.root.is_dir():
            return []
        return [
            _load_set(p, p.name)
            for p in sorted(self.root.iterdir())
            if (p / "set.toml").is_file() and _SEGMENT.match(p.name) and p.name[0] != "."
        ]

    def sets(self) -> list[TemplateSet]:
        shipped = self.shipped()
        names = {t.name for t in shipped}
        stored = [t for n, t in self.stored.items() if n not in names]
        return sorted(shipped + stored, key=lambda t: t.name)

    def get(self, name: str) -> TemplateSet:
        check_name(name)
        set_name = name.split("/", 1)[0]
        root = self.root / set_name
        if not (root / "set.toml").is_file() and set_name in self.stored:
            return self.stored[set_name]
        if not (root / "set.toml").is_file():
            known = ", ".join(s.name for s in self.sets()) or "none"
            raise NotFound(f"template set {set_name!r} not found (known: {known})", "template")
        return _load_set(root, set_name)

    def source(self, name: str) -> dict[str, str]:
        """Template text by output path: a whole set, or one ``set/path``."""
        tset = self.get(name)
        wanted = self._wanted(tset, name)
        if tset.sources is not None:
            return {p: tset.sources[p] for p in wanted}
        return {p: (tset.root / f"{p}.j2").read_text() for p in wanted}

    @staticmethod
    def _wanted(tset: TemplateSet, name: str) -> tuple[str, ...]:
        if "/" not in name:
            return tset.files
        path = name.split("/", 1)[1]
        if path not in tset.files:
            raise NotFound(f"template {name!r} not found; files of {tset.name}: "
                           + ", ".join(tset.files), "template")  # fmt: skip
        return (path,)

    # -- checking and rendering --

    def check_source(self, label: str, text: str, fmt: str) -> None:
        """Parse template text in the sandbox; TemplateError names the line and the problem."""
        self._guard(label, lambda: self._envs[fmt].parse(text) and "")

    def render_text(self, label: str, text: str, fmt: str, variables: Mapping[str, Any]) -> str:
        """Render template text (not from a file) with the rules of format ``fmt``."""
        return self._guard(label, lambda: self._envs[fmt].from_string(text).render(variables))

    def render_file(self, tset: TemplateSet, path: str, variables: Mapping[str, Any]) -> str:
        env = self._envs[format_for(path)]
        name = f"{tset.name}/{path}"
        return self._guard(name, lambda: env.get_template(name).render(variables))

    def render(self, name: str, variables: Mapping[str, Any]) -> dict[str, str]:
        """Rendered files by output path; files that render empty are left out."""
        tset = self.get(name)
        out = {}
        for path in self._wanted(tset, name):
            text = self.render_file(tset, path, variables)
            if text.strip():
                out[path] = text
        return out

    def cmdline(self, tset: TemplateSet, variables: Mapping[str, Any]) -> str:
        """The installer's kernel arguments, one line, each value a safe word."""
        if not tset.cmdline:
            return ""
        label = f"{tset.name}/set.toml:cmdline"
        text = self.render_text(label, tset.cmdline, "cmdline", variables)
        bad = _LINE_BAD.search(text)
        if bad:  # the template's own text (its values were checked one by one)
            raise TemplateError(f"template {label}: {bad.group()!r} may not appear in a kernel "
                                "command line (iPXE would read it as a command)")  # fmt: skip
        return " ".join(text.split())

    def initrd_urls(self, tset: TemplateSet, variables: Mapping[str, Any]) -> list[str]:
        """The set's extra installer initrds: each one http(s) URL, safe in an iPXE script."""
        urls = []
        for i, text in enumerate(tset.initrds):
            label = f"{tset.name}/set.toml:initrds[{i}]"
            url = self.render_text(label, text, "cmdline", variables).strip()
            if not re.fullmatch(r"https?://\S+", url) or _LINE_BAD.search(url):
                raise TemplateError(f"template {label}: {url!r} is not one http(s) URL")
            urls.append(url)
        return urls

    @staticmethod
    def _guard(name: str, fn: Callable[[], str]) -> str:
        try:
            return fn()
        except jinja2.UndefinedError as exc:
            var = _undefined_name(exc)
            raise TemplateError(
                f"template {name}: variable {var!r} is undefined "
                f"(set it: --param {var}=VALUE, or on the appliance)",
                field=var,
            )
        except SecurityError as exc:
            raise TemplateError(f"template {name}: refused by the sandbox: {exc}")
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {name}: syntax error line {exc.lineno}: {exc.message}")
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template {name}: includes {exc.name!r}, which does not exist")
        except TemplateError as exc:
            raise TemplateError(f"template {name}: {exc.message}", exc.field)
