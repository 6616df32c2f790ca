"""Secrets at rest: seal and open short strings with the server's own key.

Owns the server key (``<state_dir>/secret.key``, 0600, made on first use) and
the one way provisiond stores a credential it must give back later in clear:
BMC passwords, Windows administrator passwords. Fernet (AES-128-CBC +
HMAC-SHA256, from ``cryptography``) gives authenticated encryption, so a
tampered or foreign value fails loudly instead of decrypting to garbage.

A sealed value is text that starts with ``sealed:v1:``; nothing else in the
database may start that way. Sealed values never appear in logs or API answers.
"""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

PREFIX = "sealed:v1:"


class SecretBoxError(RuntimeError):
    """A sealed value could not be opened (wrong server key or damaged value)."""


class SecretBox:
    """Seal/open strings with the key in ``key_path``, creating it 0600 if missing."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._fernet = Fernet(self._load_or_make(key_path))

    @staticmethod
    def _load_or_make(path: Path) -> bytes:
        """Read the key, or make it; two processes making it at once agree on one key.

        The new key is written whole to a private temporary file and then
        hard-linked into place: the link either wins (our key) or fails with
        FileExistsError because another process won, and then its key, already
        complete, is the one read. A reader never sees a half-written key.
        """
        try:
            return _read_key(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Fernet.generate_key()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key + b"\n")
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return _read_key(path)  # another process made it first: use that one
        finally:
            tmp.unlink(missing_ok=True)
        return key

    def seal(self, plain: str) -> str:
        return PREFIX + self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        if not is_sealed(sealed):
            raise SecretBoxError("value is not sealed (expected the 'sealed:v1:' prefix)")
        try:
            return self._fernet.decrypt(sealed[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretBoxError(
                f"cannot open a sealed value with {self.key_path}: the server key changed "
                "or the value is damaged; set the secret again"
            ) from None


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        raise SecretBoxError(f"{path} is empty: remove it to make a new server key "
                             "(values sealed with the old key must then be set again)")  # fmt: skip
    return key


def is_sealed(value: str | None) -> bool:
    return bool(value) and str(value).startswith(PREFIX)


def for_state_dir(state_dir: Path) -> SecretBox:
    return SecretBox(state_dir / "secret.key")


_cached: dict[Path, SecretBox] = {}
_cached_lock = threading.Lock()


def cached(state_dir: Path) -> SecretBox:
    """The box of ``state_dir``, made once per process (hot paths: boot scripts, reconcile)."""
    key = Path(state_dir)
    with _cached_lock:
        box = _cached.get(key)
        if box is None:
            box = _cached[key] = for_state_dir(key)
        return box
