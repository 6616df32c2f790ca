"""Password hashes for answer files: SHA-512 crypt (``$6$``), as /etc/shadow holds them.

Owns turning an operator's plain root password into the one form an answer
file may carry (a preseed's ``root-password-crypted``, a kickstart's
``rootpw --iscrypted``, autoinstall's ``identity.password``, the FAI-style
``chpasswd -e``), and recognising a value that already is such a hash.
Pure: no I/O.

The algorithm is Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512"
(https://www.akkadia.org/drepper/SHA-crypt.txt), which glibc's ``crypt(3)``
implements; Python's ``crypt`` module is deprecated (PEP 594) and gone in
3.13, so it is written out here from the specification, step numbers cited.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

ROUNDS_DEFAULT = 5000  # spec: used when no "rounds=" is given
ROUNDS_MIN, ROUNDS_MAX = 1000, 999_999_999
ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SALT = re.compile(r"^[./0-9A-Za-z]{1,16}$")
#: crypt(3) hashes and the locked-account markers an answer file may carry as they are
_CRYPT = re.compile(r"^(\$(1|5|6|y|2[abxy]|7|gy)\$[./0-9A-Za-z$=,]{4,200}|!|\*|![./0-9A-Za-z$]*)$")
# spec step 22: the order in which the 64 digest bytes are encoded, three at a time
_ORDER = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
    (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54),
    (34, 55, 13), (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60),
    (40, 61, 19), (62, 20, 41),
)  # fmt: skip


class PasswordError(ValueError):
    """A password or hash parameter cannot be used; the message says why."""


def _repeat(block: bytes, length: int) -> bytes:
    return (block * (length // len(block) + 1))[:length]


def _b64(b2: int, b1: int, b0: int, n: int) -> str:
    w = (b2 << 16) | (b1 << 8) | b0
    out = []
    for _ in range(n):
        out.append(ITOA64[w & 0x3F])
        w >>= 6
    return "".join(out)


def _digest(pw: bytes, salt: bytes, rounds: int) -> bytes:
    b = hashlib.sha512(pw + salt + pw).digest()  # steps 4-8: digest B
    a = hashlib.sha512(pw + salt)  # steps 1-3: digest A
    a.update(_repeat(b, len(pw)))  # steps 9-10
    n = len(pw)
    while n:  # step 11: the bits of the password's length pick B or the password
        a.update(b if n & 1 else pw)
        n >>= 1
    c = a.digest()  # step 12
    p = _repeat(hashlib.sha512(pw * len(pw)).digest(), len(pw))  # steps 13-16: sequence P
    s = _repeat(hashlib.sha512(salt * (16 + c[0])).digest(), len(salt))  # steps 17-20: S
    for r in range(rounds):  # step 21
        h = hashlib.sha512(p if r & 1 else c)
        if r % 3:
            h.update(s)
        if r % 7:
            h.update(p)
        h.update(c if r & 1 else p)
        c = h.digest()
    return c


def sha512_crypt(password: str, salt: str | None = None, rounds: int | None = None) -> str:
    """``$6$[rounds=N$]salt$hash`` of ``password`` (a fresh 16-character salt by default)."""
    if "\0" in password:
        raise PasswordError("a password cannot contain a NUL byte")
    if salt is None:
        salt = "".join(secrets.choice(ITOA64) for _ in range(16))
    salt = salt[:16]  # spec: only the first 16 characters count
    if not _SALT.match(salt):
        raise PasswordError(f"salt {salt!r}: 1-16 characters of [./0-9A-Za-z]")
    prefix = "$6$"
    if rounds is not None:
        rounds = min(max(rounds, ROUNDS_MIN), ROUNDS_MAX)  # spec: out-of-range is clamped
        prefix += f"rounds={rounds}$"
    c = _digest(password.encode(), salt.encode(), rounds or ROUNDS_DEFAULT)
    text = "".join(_b64(c[i], c[j], c[k], 4) for i, j, k in _ORDER) + _b64(0, 0, c[63], 2)
    return f"{prefix}{salt}${text}"


def verify(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$6$`` hash (constant-time comparison)."""
    m = re.match(r"^\$6\$(?:rounds=(\d+)\$)?([^$]{0,16})\$", hashed)
    if not m:
        return False
    rounds = int(m.group(1)) if m.group(1) else None
    return hmac.compare_digest(sha512_crypt(password, m.group(2), rounds), hashed)


def is_crypt_hash(value: str) -> bool:
    """A crypt(3) hash (``$6$...``, ``$y$...``) or a locked marker (``!``, ``*``)."""
    return bool(_CRYPT.match(value))
