"""Secrets: password hashing, API/agent tokens and the server's SSH key pair.

Owns every primitive that touches a secret, so that none is hand-rolled
elsewhere. Passwords use scrypt (stdlib); tokens are 32 random bytes shown
once and stored as their SHA-256; the SSH key is Ed25519 written 0600
atomically (never overwritten if present); ``state_dir`` is 0700 and the
SQLite database 0600 (:func:`private_state`); the UI's TLS pair is a
self-signed P-256 certificate made by ``provisiond init`` unless the
configuration names one (:func:`ensure_tls_pair`, :func:`check_tls_pair`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt_b64), dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def new_token() -> str:
    return secrets.token_urlsafe(32)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with ``mode`` from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def private_state(state_dir: Path, db_file: Path | None) -> None:
    """``state_dir`` 0700 and an on-disk SQLite database (and its WAL files) 0600.

    The database holds password hashes, agent and CHAP secrets; the state
    folder holds the SSH key and the session-signing secret.
    """
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state_dir.chmod(0o700)
    if db_file is None:
        return
    private_file(db_file)
    for suffix in ("-wal", "-shm", "-journal"):
        extra = Path(str(db_file) + suffix)
        if extra.exists():
            private_file(extra)


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless present; narrow it to 0600 if present
    (when this process owns it: another user's CLI only reads)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
    elif path.stat().st_mode & 0o077 and path.stat().st_uid == os.geteuid():
        path.chmod(0o600)


def ensure_ssh_keypair(path: Path, comment: str = "provisiond") -> bool:
    """Create an Ed25519 key pair at ``path`` / ``path.pub`` unless present.

    Returns True when a new pair was written.
    """
    if path.exists():
        return False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private(path, private)
    write_private(Path(str(path) + ".pub"), public + f" {comment}\n".encode(), mode=0o644)
    return True


def ensure_tls_pair(cert: Path, key: Path, address: str, days: int = 825) -> bool:
    """A self-signed certificate for ``address`` (IP SAN, plus the host name) and its
    P-256 key (0600) at ``cert`` / ``key`` unless ``cert`` exists; True when written."""
    if cert.exists():
        return False
    import datetime as dt
    import ipaddress
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"provisiond {address}")])
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(address))]
    host = socket.gethostname()
    if host and host != address:
        sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(private, hashes.SHA256())
    )
    write_private(key, private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    write_private(cert, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return True


def check_tls_pair(cert: Path, key: Path) -> str:
    """The SHA-256 fingerprint of ``cert`` when ``cert`` and ``key`` load as a matching
    pair; ValueError naming the file and the fix otherwise."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise ValueError(
            f"TLS file {exc.filename} is missing: run `provisiond init` (it makes a "
            "self-signed pair) or set [http] tls_cert and tls_key to existing files"
        )
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(
            f"TLS certificate {cert} and key {key} do not load as a pair ({exc}); "
            "give a PEM certificate and its own unencrypted PEM key"
        )
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    first = x509.load_pem_x509_certificate(cert.read_bytes())  # the leaf, first in the file
    return "SHA256:" + first.fingerprint(hashes.SHA256()).hex(":")


def ssh_fingerprint(public_line: str) -> str:
    """OpenSSH-style SHA256 fingerprint of an ``ssh-ed25519 AAAA...`` line."""
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("not an SSH public key line")
    blob = base64.b64decode(parts[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
