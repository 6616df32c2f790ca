"""The hardware inventory an agent reports: its schema, the only shape stored.

Owns :func:`parse_inventory`, which turns the untrusted ``inventory`` of an
agent's registration into plain data of a fixed shape (msgspec structs:
types, string lengths, list counts and number ranges), or raises
:class:`provisiond.errors.Invalid` naming the field (``inventory.cpu.count``)
so the API answers 400 and nothing is stored. Unknown keys are dropped, so
an agent newer than the daemon still registers; pages that show an
inventory can trust its types. Field names follow ``initrd/.../inventory.sh``.

Code that needs a stored inventory's disks reads them through
:class:`InventoryView` (frozen, typed: :class:`DiskView` with its ``/dev``
path), the one reader of ``inventory["disks"]``; :func:`default_disk` is the
disk a deploy or install writes when none is named.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from provisiond.errors import Invalid

Text = Annotated[str, Meta(max_length=256)]
Name = Annotated[str, Meta(max_length=64)]
Count = Annotated[int, Meta(ge=0, le=1 << 20)]
Bytes = Annotated[int, Meta(ge=0, le=1 << 62)]


class Cpu(Struct):
    model: Text = ""
    count: Count | None = 0  # the agent's json_int says null for what it cannot read


class Disk(Struct):
    name: Name
    size_bytes: Bytes | None = 0
    model: Text = ""
    serial: Text = ""
    rotational: bool | None = None


class Nic(Struct):
    name: Name = ""
    mac: Annotated[str, Meta(max_length=32)] = ""
    driver: Name = ""
    link: bool | None = None
    speed_mbps: Annotated[int, Meta(ge=-1, le=1 << 30)] | None = None


class Dmi(Struct):
    vendor: Text = ""
    product: Text = ""
    serial: Text = ""
    uuid: Text = ""


class Inventory(Struct):
    cpu: Cpu = msgspec.field(default_factory=Cpu)
    memory_bytes: Bytes | None = 0
    disks: Annotated[list[Disk], Meta(max_length=256)] = msgspec.field(default_factory=list)
    nics: Annotated[list[Nic], Meta(max_length=64)] = msgspec.field(default_factory=list)
    dmi: Dmi = msgspec.field(default_factory=Dmi)
    firmware: Literal["bios", "uefi", ""] = ""
    kernel: Text = ""


_AT = re.compile(r" - at `\$(.*)`$")


def parse_inventory(raw: Any) -> dict[str, Any]:
    """The validated inventory as plain JSON data; Invalid naming the bad field."""
    try:
        inv = msgspec.convert(raw, Inventory)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _AT.search(msg)
        path = m.group(1).lstrip(".") if m else ""
        field = f"inventory.{path}" if path else "inventory"
        reason = _AT.sub("", msg)
        raise Invalid(f"register: '{field}': {reason}", field=field)
    return msgspec.to_builtins(inv)


FALLBACK_DISK = "/dev/sda"  # when the inventory names no disk


@dataclass(frozen=True)
class DiskView:
    name: str  # kernel name: "sda", "nvme0n1"
    size_bytes: int | None = None  # None when the agent could not read it

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


@dataclass(frozen=True)
class InventoryView:
    """The disks of a stored inventory, typed; entries without a name are left out."""

    disks: tuple[DiskView, ...] = ()

    @classmethod
    def of(cls, inventory: Mapping[str, Any] | None) -> InventoryView:
        disks = []
        for d in (inventory or {}).get("disks", []) or []:
            if isinstance(d, Mapping) and d.get("name"):
                size = d.get("size_bytes")
                disks.append(DiskView(str(d["name"]), int(size) if size else None))
        return cls(tuple(disks))

    @property
    def disk_paths(self) -> list[str]:
        return [d.path for d in self.disks]

    def disk(self, path: str) -> DiskView | None:
        """The disk ``/dev/<name>`` (or ``<name>``) of this inventory, or None."""
        name = path.removeprefix("/dev/")
        return next((d for d in self.disks if d.name == name), None)


def default_disk(inventory: Mapping[str, Any] | None) -> str:
    """The first disk of the inventory, or /dev/sda when it names none."""
    disks = InventoryView.of(inventory).disks
    return disks[0].path if disks else FALLBACK_DISK
