"""Kernels: building the idle-agent initrd and registering kernels.

Owns ``provisiond initrd build``: runs the shipped ``initrd/build.sh`` for the served
kernel (default: the newest under ``/lib/modules``), places ``vmlinuz`` and
``initrd.img`` under ``<boot assets>/kernels/<name>/`` and records the result
as the default :class:`provisiond.model.Kernel`. Owns the kernel rules too —
the one :func:`check` (name, script-safe fields, paths inside the boot
assets) and the one default — that the CLI (:func:`add`) and the REST API
(:func:`create`, :func:`change`, :func:`remove`) both apply.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from provisiond import events, shipped
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Conflict, Invalid, ProvisiondError
from provisiond.model import Appliance, Kernel
from pxe.boot import script_problem


def newest_kernel(modroot: Path = Path("/lib/modules")) -> str:
    versions = sorted(
        (p.name for p in modroot.iterdir() if (p / "modules.dep").exists()),
        key=lambda v: [int(x) if x.isdigit() else x for x in v.replace("-", ".").split(".")],
    ) if modroot.is_dir() else []  # fmt: skip
    if not versions:
        raise ProvisiondError(
            f"no kernel modules under {modroot}: apt-get install linux-image-amd64 "
            "(the kernel provisiond serves to idle resources)"
        )
    return versions[-1]


def build_agent(
    config: Config,
    db: Database,
    kernel_version: str | None,
    name: str = "agent",
    echo: Callable[[str], None] = print,
) -> Kernel:
    kver = kernel_version or newest_kernel()
    out = config.boot_assets_dir / "kernels" / name
    out.mkdir(parents=True, exist_ok=True)
    echo(f"building the agent initrd for kernel {kver} into {out}")
    proc = subprocess.Popen(
        ["bash", str(shipped.initrd_build_script()), "--kernel", kver, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        echo(line.rstrip())
    if proc.wait() != 0:
        raise ProvisiondError(
            f"initrd build for kernel {kver} failed (exit {proc.returncode}); see the lines above"
        )
    rel = out.relative_to(config.boot_assets_dir)
    with db.transaction() as s:
        s.execute(update(Kernel).values(is_default=False))
        k = s.scalars(select(Kernel).where(Kernel.name == name)).first()
        if k is None:
            k = Kernel(name=name)
            s.add(k)
        k.version, k.is_default = kver, True
        k.kernel_path, k.initrd_path = f"{rel}/vmlinuz", f"{rel}/initrd.img"
        events.record(s, "cli", "kernel.built", name, f"kernel {kver}")
    echo(f"registered kernel '{name}' ({kver}) as the default idle-agent kernel")
    return k


def check_script_fields(fields: dict[str, object], what: str = "kernel") -> None:
    """Input-time guard for what lands in an iPXE script: Invalid naming the field."""
    for key, value in fields.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            problem = script_problem(str(item)) if item is not None else None
            if problem:
                raise Invalid(f"{what} {key} {str(item)!r} {problem}", field=key)


def add(
    config: Config,
    db: Database,
    name: str,
    kernel_file: Path,
    initrd_file: Path | None,
    cmdline: str = "",
    default: bool = False,
    version: str = "",
) -> Kernel:
    """Register a kernel (+ initrd) for network boot, copied into the boot assets."""
    check(name, f"kernels/{name}/vmlinuz", version=version, cmdline=cmdline,
          initrd_path=f"kernels/{name}/initrd.img" if initrd_file is not None else "")  # fmt: skip
    for f in (kernel_file, initrd_file):
        if f is not None and not f.is_file():
            raise ProvisiondError(f"kernel add: {f} is not a file")
    out = config.boot_assets_dir / "kernels" / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel_file, out / "vmlinuz")
    if initrd_file is not None:
        shutil.copyfile(initrd_file, out / "initrd.img")
    rel = out.relative_to(config.boot_assets_dir)
    with db.transaction() as s:
        if default:
            s.execute(update(Kernel).values(is_default=False))
        k = s.scalars(select(Kernel).where(Kernel.name == name)).first()
        if k is None:
            k = Kernel(name=name)
            s.add(k)
        k.version, k.cmdline, k.is_default = version, cmdline, default or k.is_default
        k.kernel_path = f"{rel}/vmlinuz"
        k.initrd_path = f"{rel}/initrd.img" if initrd_file is not None else ""
        events.record(s, "cli", "kernel.added", name, str(kernel_file))
    return k


# --- the kernel rules (CLI and REST API alike) -----------------------------------

#: a kernel name: it names a directory under the boot assets (``kernels/<name>``)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: the text fields of a Kernel an operator sets
TEXT_FIELDS = ("version", "kernel_path", "initrd_path", "cmdline")


def check(
    name: str | None,
    kernel_path: str | None,
    *,
    version: str | None = "",
    initrd_path: str | None = "",
    cmdline: str | None = "",
) -> None:
    """The one kernel rule: Invalid naming the field, or nothing."""
    if not name or not kernel_path:
        raise Invalid(
            "name and kernel_path are required", field="name" if not name else "kernel_path"
        )
    if not NAME.match(name):
        raise Invalid(
            f"kernel name {name!r}: letters, digits, . _ - only, starting with a letter or digit",
            field="name",
        )
    fields = {"version": version, "kernel_path": kernel_path, "initrd_path": initrd_path}
    check_script_fields({"name": name, **fields, "cmdline": cmdline})
    for key in ("kernel_path", "initrd_path"):
        path = fields[key] or ""
        if path.startswith("/") or ".." in path.split("/"):
            raise Invalid(f"{key} must be relative to the boot assets directory", field=key)


def _apply(
    session: Session, k: Kernel, fields: dict[str, str | None], default: bool | None
) -> None:
    for key in ("name", *TEXT_FIELDS):
        if key in fields:
            setattr(k, key, fields[key])
    check(k.name, k.kernel_path, version=k.version, initrd_path=k.initrd_path, cmdline=k.cmdline)
    if default:
        for other in session.scalars(select(Kernel).where(Kernel.is_default)):
            other.is_default = False
        k.is_default = True
    elif default is False:
        k.is_default = False


def create(
    session: Session, fields: dict[str, str | None], default: bool | None, actor: str
) -> Kernel:
    """A kernel record for files already under the boot assets (the API's POST)."""
    name = fields.get("name")
    if session.scalars(select(Kernel.id).where(Kernel.name == name)).first():
        raise Conflict(f"kernel '{name}' already exists", field="name")
    k = Kernel(name="", kernel_path="")
    _apply(session, k, fields, default)
    session.add(k)
    session.flush()
    events.record(session, actor, "kernel.created", k.name, k.kernel_path)
    return k


def change(
    session: Session, k: Kernel, fields: dict[str, str | None], default: bool | None, actor: str
) -> Kernel:
    _apply(session, k, fields, default)
    changed = sorted({*fields, *(["is_default"] if default is not None else [])})
    events.record(session, actor, "kernel.updated", k.name, ", ".join(changed))
    return k


def remove(session: Session, k: Kernel, actor: str) -> None:
    """Remove a kernel record; refused while an appliance boots it."""
    used = list(session.scalars(select(Appliance.name).where(Appliance.kernel_id == k.id)))
    if used:
        raise Conflict(f"kernel '{k.name}' is used by appliances: {', '.join(used)}")
    events.record(session, actor, "kernel.removed", k.name, "")
    session.delete(k)
