"""Kernels: building the idle-agent initrd and registering kernels.

Owns ``provisiond initrd build``: runs the shipped ``initrd/build.sh`` for the served
kernel (default: the newest under ``/lib/modules``), places ``vmlinuz`` and
``initrd.img`` under ``<boot assets>/kernels/<name>/`` and records the result
as the default :class:`provisiond.model.Kernel`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select, update

from provisiond import events, shipped
from provisiond.config import Config
from provisiond.db import Database
from provisiond.errors import Invalid, ProvisiondError
from provisiond.model import Kernel
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
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ProvisiondError(f"kernel name {name!r}: letters, digits, . _ - only")
    for f in (kernel_file, initrd_file):
        if f is not None and not f.is_file():
            raise ProvisiondError(f"kernel add: {f} is not a file")
    check_script_fields({"cmdline": cmdline, "version": version})
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
