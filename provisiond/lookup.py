"""One lookup for what an operator types: a record by name or id, and a job's appliance.

Owns :func:`find` — the one way the CLI, the API, the UI and the core turn a
reference (``"web1"``, ``"7"``) into an appliance, image, kernel, storage,
template or user row, with one ``NotFound`` message per kind naming the
command that lists them — and :func:`appliance_of`, the appliance a job
works for. Resources are found by more than a name (MAC, IP, ``r-<mac>``):
:func:`provisiond.resources.find`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond.errors import NotFound
from provisiond.model import Appliance, Image, Job, Kernel, Storage, User

T = TypeVar("T")


@dataclass(frozen=True)
class Kind:
    """How a kind of record is named in messages."""

    what: str  # "image"
    hint: str  # "; see `provisiond image list`"
    field: str | None  # the API error's field


KINDS: dict[type, Kind] = {
    Appliance: Kind("appliance", "; see `provisiond appliance list`", None),
    Image: Kind("image", "; see `provisiond image list`", "image"),
    Kernel: Kind("kernel", "; see `provisiond kernel list`", "kernel"),
    Storage: Kind("storage", "; see `provisiond storage list`", "storage"),
    User: Kind("user", "", "user"),
}


def find(session: Session, model: type[T], ref: str | int) -> T:
    """The ``model`` row named ``ref`` (or with id ``ref``); NotFound naming the list command."""
    ref = str(ref)
    cond = model.name == ref
    if ref.isdigit():
        cond = cond | (model.id == int(ref))
    obj = session.scalars(select(model).where(cond)).first()
    if obj is None:
        kind = KINDS.get(model) or Kind(model.__name__.lower(), "", None)
        raise NotFound(f"{kind.what} '{ref}' not found{kind.hint}", field=kind.field)
    return obj


def appliance_of(session: Session, job: Job | int | None) -> Appliance | None:
    """The appliance ``job`` (a Job or its id) works for; None if it has none or it is gone."""
    if not isinstance(job, Job):
        job = session.get(Job, job) if job is not None else None
    if job is None or job.appliance_id is None:
        return None
    return session.get(Appliance, job.appliance_id)
