"""A SAN-boot appliance's CHAP secret: sealed in its parameters, opened in one place.

Owns the one accessor for ``params["chap_secret"]``. The sanboot deployer
stores :func:`seal` of the fresh secret (:mod:`provisiond.secretbox`, the
server key), never the secret itself; :func:`secret_of` opens it for the
three readers that need it in clear: the boot policy (the SAN script, served
only to the machine that is booting, :mod:`web.boot`), the exporters'
reconcile at start-up and when a storage host comes back
(:func:`provisiond.storages.wanted_exports`) and the storage watch that
restores a vanished export (:mod:`provisiond.storagewatch`). The API, UI and
CLI never show the key (:func:`provisiond.present.hidden_param`) and log
records are redacted (:mod:`provisiond.logs`). Migration 0009 sealed the
plain secrets older versions stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from provisiond.secretbox import cached, is_sealed

KEY = "chap_secret"


def seal(state_dir: Path, secret: str) -> str:
    """What the appliance's parameters hold instead of ``secret``."""
    return cached(state_dir).seal(secret)


def secret_of(state_dir: Path, params: Mapping[str, Any]) -> str | None:
    """The CHAP secret in clear, or None when the appliance has none.

    Raises :class:`provisiond.secretbox.SecretBoxError` (naming the key file,
    never the value) when the server key cannot open it. A value that is not
    sealed (a database not yet migrated) is given back as it is.
    """
    value = params.get(KEY)
    if not value:
        return None
    value = str(value)
    return _open(Path(state_dir), value) if is_sealed(value) else value


@lru_cache(maxsize=4096)
def _open(state_dir: Path, sealed: str) -> str:
    """Opened once per sealed value: the boot policy asks on every DHCP packet of a SAN
    appliance (a fresh start seals a fresh value, so a stale entry is never asked for)."""
    return cached(state_dir).open(sealed)
