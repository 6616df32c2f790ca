"""Power control: one interface over BMCs and hypervisors (issue 13).

Owns the driver interface every power backend implements, the typed errors a
caller can tell apart (unreachable, refused credentials, unsupported action),
and the registry that turns a resource's stored settings into a driver.

Drivers (one module each, registered by name in ``DRIVERS``):
``wol`` (magic packet, on only), ``ipmi`` (ipmitool lanplus), ``redfish``
(sessions + ComputerSystem.Reset), ``qemu`` (QMP socket, for the test bed).
Every driver call is bounded by ``PowerSettings.timeout``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    STATUS = "status"


class PowerError(RuntimeError):
    """A power call failed; ``kind`` says how, the message names the BMC and the fix."""

    kind = "error"


class BmcUnreachable(PowerError):
    kind = "unreachable"


class BadCredentials(PowerError):
    kind = "credentials"


class NotSupported(PowerError):
    kind = "unsupported"


@dataclass(frozen=True)
class PowerSettings:
    """What a driver needs; ``password`` is clear text here and sealed at rest."""

    driver: str
    address: str = ""
    user: str = ""
    password: str = field(default="", repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    mac: str = ""  # the resource's boot MAC (WoL)
    timeout: float = 10.0


class PowerDriver(Protocol):
    def status(self) -> PowerState: ...

    def act(self, action: PowerAction) -> None:
        """Perform on/off/cycle; raise a PowerError subclass when it cannot."""


DriverFactory = Callable[[PowerSettings], PowerDriver]
DRIVERS: dict[str, DriverFactory] = {}


def register(name: str) -> Callable[[DriverFactory], DriverFactory]:
    def deco(factory: DriverFactory) -> DriverFactory:
        DRIVERS[name] = factory
        return factory

    return deco


BUILTIN = ("wol", "ipmi", "redfish", "qemu")


def load_builtin() -> None:
    """Import the built-in driver modules (each registers itself); missing ones are skipped."""
    import importlib

    for name in BUILTIN:
        if name not in DRIVERS:
            try:
                importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise


def driver_for(settings: PowerSettings) -> PowerDriver:
    if settings.driver not in DRIVERS:
        load_builtin()
    try:
        factory = DRIVERS[settings.driver]
    except KeyError:
        known = ", ".join(sorted(DRIVERS)) or "none"
        raise NotSupported(f"unknown power driver {settings.driver!r} (known: {known})") from None
    return factory(settings)


def settings_of(resource: Any, open_secret: Callable[[str], str]) -> PowerSettings | None:
    """The stored power settings of a ``model.Resource`` row, or None when it has none.

    ``open_secret`` opens the sealed password (``SecretBox.open``); it is only
    called when a password is stored.
    """
    if not resource.power_driver:
        return None
    secret = resource.power_secret
    return PowerSettings(
        driver=resource.power_driver,
        address=resource.power_address or "",
        user=resource.power_user or "",
        password=open_secret(secret) if secret else "",
        options=dict(resource.power_options or {}),
        mac=resource.mac,
    )
