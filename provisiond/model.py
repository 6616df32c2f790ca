"""The data model: SQLAlchemy 2 tables of the inventory.

Owns the persistent nouns (openQRM's vocabulary): Resource, Image, Kernel,
Storage, Volume, Template, Appliance, plus Lease, Job, Event, User,
ApiToken and Instance (a daemon sharing the database, with its lease).
``owner`` on Resource, Appliance and Job names the instance that runs their
transient work (:mod:`provisiond.recovery` decides what is orphaned). No
behaviour beyond small derived properties lives here; state changes go
through :mod:`provisiond.lifecycle`. The schema is created by the Alembic
migrations in ``provisiond/migrations``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Resource(Base):
    __tablename__ = "resource"
    id: Mapped[int] = mapped_column(primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True, index=True)
    macs: Mapped[list[Any]] = mapped_column(default=list)
    name: Mapped[str | None] = mapped_column(String(63), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True, default="new")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    ip: Mapped[str | None] = mapped_column(String(45), index=True)  # last address seen
    reserved_ip: Mapped[str | None] = mapped_column(String(15), unique=True)  # DHCP reservation
    inventory: Mapped[dict[str, Any]] = mapped_column(default=dict)
    hostkey: Mapped[str | None] = mapped_column(Text)  # "ssh-ed25519 AAAA..." pinned
    hostkey_fingerprint: Mapped[str | None] = mapped_column(String(128))
    agent_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    # offered by a registration with another key (state key-changed), until accept-key
    hostkey_pending: Mapped[str | None] = mapped_column(Text)
    ip_pending: Mapped[str | None] = mapped_column(String(45))
    last_heartbeat: Mapped[dt.datetime | None] = mapped_column(DateTime)
    owner: Mapped[str | None] = mapped_column(String(63), index=True)  # instance of its work
    # power control (provisiond.power); power_secret is sealed by provisiond.secretbox
    power_driver: Mapped[str | None] = mapped_column(String(16))
    power_address: Mapped[str | None] = mapped_column(Text)
    power_user: Mapped[str | None] = mapped_column(String(128))
    power_secret: Mapped[str | None] = mapped_column(Text)
    power_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    power_state: Mapped[str | None] = mapped_column(String(16))  # on|off|unknown, last poll
    power_checked_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    power_error: Mapped[str | None] = mapped_column(Text)
    # N-to-1 HA (provisiond.ha): an idle resource in a pool is a spare of that pool's appliances
    ha_pool: Mapped[str | None] = mapped_column(String(63), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    @property
    def display_name(self) -> str:
        return self.name or "r-" + self.mac.replace(":", "")


class Storage(Base):
    __tablename__ = "storage"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(Text)
    exporter: Mapped[str] = mapped_column(String(16), default="auto")
    # storage hosts (issue 16): address, "up" | "down" (None: this machine), why it is down
    host: Mapped[str | None] = mapped_column(String(255))
    host_state: Mapped[str | None] = mapped_column(String(16))
    host_reason: Mapped[str | None] = mapped_column(Text)


class Volume(Base):
    __tablename__ = "volume"
    __table_args__ = (UniqueConstraint("storage_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    storage_id: Mapped[int] = mapped_column(ForeignKey("storage.id"))
    name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    origin_id: Mapped[int | None] = mapped_column(ForeignKey("volume.id"))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    storage: Mapped[Storage] = relationship()


class Image(Base):
    __tablename__ = "image"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    os: Mapped[str] = mapped_column(String(32), default="linux")
    format: Mapped[str] = mapped_column(String(16), default="raw")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    volume_id: Mapped[int | None] = mapped_column(ForeignKey("volume.id"))
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    volume: Mapped[Volume | None] = relationship()


class Kernel(Base):
    __tablename__ = "kernel"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    version: Mapped[str] = mapped_column(String(128), default="")
    kernel_path: Mapped[str] = mapped_column(Text)  # relative to boot_assets_dir
    initrd_path: Mapped[str] = mapped_column(Text, default="")
    cmdline: Mapped[str] = mapped_column(Text, default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Template(Base):
    __tablename__ = "template"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # kickstart|preseed|autoinstall|unattend|fai
    path: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # a set stored through the CLI/API/UI (provisiond.templatestore): its files' template
    # text by output path; params holds answer, cmdline and modes
    description: Mapped[str] = mapped_column(Text, default="")
    files: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, default=utcnow,
                                                           onupdate=utcnow)  # fmt: skip


class Appliance(Base):
    __tablename__ = "appliance"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    resource_id: Mapped[int] = mapped_column(ForeignKey("resource.id"), index=True)
    kernel_id: Mapped[int | None] = mapped_column(ForeignKey("kernel.id"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("image.id"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("template.id"))
    volume_id: Mapped[int | None] = mapped_column(ForeignKey("volume.id"))
    mode: Mapped[str] = mapped_column(String(16))  # sanboot | local | template
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ha: Mapped[bool] = mapped_column(Boolean, default=False)
    # N-to-1 HA (provisiond.ha, provisiond.hawatch)
    ha_pool: Mapped[str | None] = mapped_column(String(63))
    ha_state: Mapped[str | None] = mapped_column(String(16))
    ha_reason: Mapped[str | None] = mapped_column(Text)
    ha_failover_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    ha_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)  # OS reporter
    ha_heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    state: Mapped[str] = mapped_column(String(16), index=True, default="stopped")
    state_reason: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(63), index=True)  # instance of its work
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    resource: Mapped[Resource] = relationship()
    image: Mapped[Image | None] = relationship()
    kernel: Mapped[Kernel | None] = relationship()
    volume: Mapped[Volume | None] = relationship()


class Lease(Base):
    __tablename__ = "lease"
    ip: Mapped[str] = mapped_column(String(15), primary_key=True)
    mac: Mapped[str] = mapped_column(String(17), index=True)
    subnet: Mapped[str] = mapped_column(String(18))
    state: Mapped[str] = mapped_column(String(12))  # offered | bound | released
    hostname: Mapped[str] = mapped_column(String(63), default="")
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class Job(Base):
    __tablename__ = "job"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # deploy|capture|erase|clone|import|...
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    resource_id: Mapped[int | None] = mapped_column(ForeignKey("resource.id"), index=True)
    appliance_id: Mapped[int | None] = mapped_column(ForeignKey("appliance.id"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("image.id"))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    rate: Mapped[float] = mapped_column(default=0.0)  # bytes per second
    log: Mapped[str] = mapped_column(Text, default="")
    outcome: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str | None] = mapped_column(String(63), index=True)  # instance running it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.rate or not self.bytes_total:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / self.rate)


class Instance(Base):
    """A daemon on this database (one per rack): who it is and how long its lease holds.

    The instance renews ``heartbeat_at`` and ``expires_at`` every
    ``lease.heartbeat_interval`` seconds; work owned by an instance whose
    ``expires_at`` has passed is orphaned. ``expires_at`` is stored (not
    derived from this daemon's configuration) so instances with different
    settings judge each other by the lease each one promised.
    """

    __tablename__ = "instance"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    pid: Mapped[int] = mapped_column(default=0)
    host: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Event(Base):
    __tablename__ = "event"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))  # "admin", "cli:root", "agent", "daemon"
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), default="viewer")  # admin|operator|viewer
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class WebSession(Base):
    """A logged-in browser: the cookie carries the secret, the row its SHA-256.

    Deleting the row ends the session (log-out; every row of a user on a
    password or role change)."""

    __tablename__ = "web_session"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class ApiToken(Base):
    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    user: Mapped[User] = relationship()
