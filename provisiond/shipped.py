"""Shipped files: what the daemon needs at run time besides its Python code.

Owns finding the initrd builder (``initrd/build.sh`` + ``initrd/rootfs``) and
the install / iPXE templates through :mod:`importlib.resources`, so a wheel
installed with ``pip install .`` finds them inside the installed package and
nothing reads the source checkout. In the repository ``provisiond/share/initrd``
and ``provisiond/share/templates`` are symlinks to the top-level ``initrd/`` and
``templates/``; a wheel holds real copies (``package-data`` in pyproject.toml).
The Alembic migrations (``provisiond/migrations``) and the web UI's templates
and static files (``web/templates``, ``web/static``) live inside their packages
and ship as their package data.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from provisiond.errors import ProvisiondError


def share(*parts: str) -> Path:
    """A shipped file or directory under ``provisiond/share`` as a real path.

    Programs such as bash need a path on disk, so a zipped install (no file
    system path) is refused with the fix rather than extracted piecemeal.
    """
    node = resources.files("provisiond").joinpath("share", *parts)
    if not isinstance(node, Path):
        raise ProvisiondError(
            f"provisiond's shipped file {'/'.join(parts)} is not on disk ({node!r}): "
            "install provisiond unpacked (pip install, not a zipapp)"
        )
    if not node.exists():
        raise ProvisiondError(
            f"provisiond's shipped file {node} is missing: the installation is incomplete; "
            "reinstall provisiond (pip install --force-reinstall provisiond)"
        )
    return node


def initrd_dir() -> Path:
    """The initrd builder: ``build.sh``, ``modules.list`` and ``rootfs/``."""
    return share("initrd")


def initrd_build_script() -> Path:
    return share("initrd", "build.sh")


def _quoted(word: str) -> str:
    """A path as one ExecStart word (systemd splits on spaces)."""
    return f'"{word}"' if " " in word else word


def systemd_unit(exe: str | None = None, config: str | None = None) -> str:
    """``provisiond.service``, with ExecStart naming ``exe`` and ``config`` when given."""
    text = resources.files("provisiond").joinpath("provisiond.service").read_text()
    if exe or config:
        old = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        _, _, rest = old.partition("=")
        default_exe, _, tail = rest.partition(" --config ")
        default_config = tail.split()[0]
        exe, config = _quoted(exe or default_exe), _quoted(config or default_config)
        new = f"ExecStart={exe} --config {config} serve"
        text = text.replace(old, new)
    return text


def templates_dir() -> Path:
    """The shipped templates: ``install/`` (answer files) and ``ipxe/`` (boot scripts)."""
    return share("templates")
