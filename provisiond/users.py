"""Users, API tokens and authentication: the service functions behind log-in and the API.

Owns every change to :class:`provisiond.model.User` and
:class:`provisiond.model.ApiToken`, and the answer to "who is this?" for a
password or a bearer token. Passwords and tokens go through
:mod:`provisiond.security` (scrypt, SHA-256 of 32 random bytes); a token is
shown once, at creation. A browser session is a :class:`WebSession` row
(the cookie holds its secret): log-out deletes it, and a password or role
change deletes every session of that user, so a saved cookie dies with them.
:class:`LoginThrottle` slows repeated failures down (pure and
clock-injectable); an attempt is counted when it is admitted, under one lock,
so parallel guesses cannot all pass the check; the client address is the
first key, the user name a second one with a larger allowance, so one
address cannot lock the right user out everywhere.

Roles are ordered: ``viewer`` (reads) < ``operator`` (changes the inventory)
< ``admin`` (also manages users and everyone's tokens).
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import select
from sqlalchemy.orm import Session

from provisiond import events
from provisiond.errors import Conflict, Invalid, NotFound
from provisiond.model import ApiToken, User, WebSession, utcnow
from provisiond.security import hash_password, hash_token, new_token, verify_password

ROLES = ("viewer", "operator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 8
#: verified against when the user does not exist, so both paths cost one scrypt
_DUMMY_HASH = hash_password("provisiond-no-such-user")


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user id, name and role, and how they proved it."""

    user_id: int
    name: str
    role: str
    via: str  # "session" | "token"

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise Invalid(f"role {role!r}: must be one of {', '.join(ROLES)}", field="role")
    return role


def _check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid(f"password: at least {MIN_PASSWORD} characters", field="password")
    return password


def create(session: Session, name: str, password: str, role: str, actor: str) -> User:
    if not isinstance(name, str) or not _NAME.match(name):
        raise Invalid("name: letters, digits, '.', '_' or '-' (up to 64)", field="name")
    _check_role(role)
    _check_password(password)
    if session.scalars(select(User.id).where(User.name == name)).first():
        raise Conflict(f"user '{name}' already exists", field="name")
    user = User(name=name, password_hash=hash_password(password), role=role)
    session.add(user)
    session.flush()
    events.record(session, actor, "user.created", name, f"role {role}")
    return user


def update(
    session: Session,
    user: User,
    actor: str,
    role: str | None = None,
    password: str | None = None,
) -> User:
    if role is not None and role != user.role:
        _check_role(role)
        if user.role == "admin" and role != "admin":
            _keep_one_admin(session, user)
        user.role = role
        events.record(session, actor, "user.role", user.name, f"role {role}")
        end_sessions(session, user.id)
    if password is not None:
        user.password_hash = hash_password(_check_password(password))
        events.record(session, actor, "user.password", user.name, "password changed")
        end_sessions(session, user.id)
    return user


def _keep_one_admin(session: Session, user: User) -> None:
    others = session.scalars(select(User.id).where(User.role == "admin", User.id != user.id))
    if others.first() is None:
        raise Conflict(f"user '{user.name}' is the last admin; make another admin first")


def delete(session: Session, user: User, actor: str) -> None:
    if user.role == "admin":
        _keep_one_admin(session, user)
    for tok in session.scalars(select(ApiToken).where(ApiToken.user_id == user.id)):
        session.delete(tok)
    end_sessions(session, user.id)
    events.record(session, actor, "user.removed", user.name, "")
    session.delete(user)


def authenticate_password(session: Session, name: str, password: str) -> Principal | None:
    """The principal for a correct name + password; None otherwise (constant work)."""
    user = session.scalars(select(User).where(User.name == name)).first()
    ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
    if user is None or not ok:
        return None
    return Principal(user.id, user.name, user.role, "session")


def principal_for_user(session: Session, user_id: int, via: str = "session") -> Principal | None:
    user = session.get(User, user_id)
    return Principal(user.id, user.name, user.role, via) if user else None


def open_session(session: Session, user_id: int, lifetime: dt.timedelta) -> str:
    """A new browser session for ``user_id``; returns its secret (for the cookie)."""
    now = utcnow()
    session.execute(sql_delete(WebSession).where(WebSession.expires_at <= now))
    secret = new_token()
    session.add(WebSession(user_id=user_id, token_hash=hash_token(secret), created_at=now,
                           expires_at=now + lifetime))  # fmt: skip
    return secret


def principal_for_session(session: Session, secret: str) -> Principal | None:
    """The user of a live, unexpired session; None once it was ended or expired."""
    row = session.execute(
        select(User.id, User.name, User.role)
        .join(WebSession, WebSession.user_id == User.id)
        .where(WebSession.token_hash == hash_token(secret), WebSession.expires_at > utcnow())
    ).first()
    return Principal(row.id, row.name, row.role, "session") if row else None


def close_session(session: Session, secret: str) -> None:
    session.execute(sql_delete(WebSession).where(WebSession.token_hash == hash_token(secret)))


def end_sessions(session: Session, user_id: int) -> None:
    """End every browser session of ``user_id`` (password or role changed, user removed)."""
    session.execute(sql_delete(WebSession).where(WebSession.user_id == user_id))


def authenticate_token(session: Session, token: str) -> Principal | None:
    row = session.execute(
        select(User.id, User.name, User.role)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_token(token))
    ).first()
    return Principal(row.id, row.name, row.role, "token") if row else None


def create_token(session: Session, user: User, name: str, actor: str) -> tuple[ApiToken, str]:
    """A new token for ``user``; the secret is returned once and stored hashed."""
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise Invalid("token name: 1 to 64 characters", field="name")
    secret = new_token()
    tok = ApiToken(user_id=user.id, name=name.strip(), token_hash=hash_token(secret))
    session.add(tok)
    session.flush()
    events.record(session, actor, "token.created", user.name, f"token {tok.name}")
    return tok, secret


def find_token(session: Session, token_id: int, owner: Principal) -> ApiToken:
    tok = session.get(ApiToken, token_id)
    if tok is None or (tok.user_id != owner.user_id and not owner.can("admin")):
        raise NotFound(f"token {token_id} not found", field="token")
    return tok


def delete_token(session: Session, tok: ApiToken, actor: str) -> None:
    events.record(session, actor, "token.removed", tok.user.name, f"token {tok.name}")
    session.delete(tok)


def user_dict(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "created_at": user.created_at.isoformat() if user.created_at else None,
    }


def token_dict(tok: ApiToken) -> dict[str, Any]:
    return {
        "id": tok.id,
        "name": tok.name,
        "user": tok.user.name if tok.user else None,
        "created_at": tok.created_at.isoformat() if tok.created_at else None,
    }


class LoginThrottle:
    """Exponential slow-down of log-in attempts: per client address first, then per name.

    :meth:`admit` checks and counts in one step under the lock, so N parallel
    guesses cannot all see "go ahead" before any failure is recorded. The
    address key allows ``free`` attempts; the name key allows ``name_free``
    (more), so an attacker at one address is slowed down long before the
    name is, and the right user at another address still gets in; a spray
    from many addresses slows the name down for everyone (bounded by ``cap``).
    A success clears the name's count and takes back only its own attempt from
    the address's (logging in to one's own account between guesses does not
    reset the address); a record idle for ``forget`` seconds is dropped.
    """

    def __init__(
        self,
        free: int = 3,
        base: float = 1.0,
        cap: float = 60.0,
        clock: Callable = time.monotonic,
        name_free: int = 20,
        forget: float = 900.0,
    ) -> None:
        self.free, self.base, self.cap, self.clock = free, base, cap, clock
        self.name_free, self.forget = name_free, forget
        self._fails: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def keys(address: str, name: str) -> tuple[str, str]:
        return "ip:" + address, "user:" + name.lower()

    def _get(self, key: str, now: float) -> tuple[int, float]:
        count, last = self._fails.get(key, (0, 0.0))
        if count and now - last > self.forget:
            del self._fails[key]
            return 0, 0.0
        return count, last

    def _delay(self, key: str, free: int) -> float:
        count, last = self._get(key, self.clock())
        if count < free:
            return 0.0
        wait = min(self.cap, self.base * 2 ** (count - free))
        return max(0.0, last + wait - self.clock())

    def _count(self, key: str, now: float) -> None:
        count, _ = self._get(key, now)
        self._fails[key] = (count + 1, now)
        if len(self._fails) > 10_000:  # bounded memory under a spray of names
            oldest = sorted(self._fails, key=lambda k: self._fails[k][1])[:5_000]
            for old in oldest:
                del self._fails[old]

    def admit(self, address: str, name: str) -> float:
        """0 = go ahead (the attempt is counted as a failure until :meth:`succeeded`),
        else the seconds to wait (nothing counted)."""
        ip, user = self.keys(address, name)
        with self._lock:
            wait = max(self._delay(ip, self.free), self._delay(user, self.name_free))
            if wait > 0:
                return wait
            now = self.clock()
            self._count(ip, now)
            self._count(user, now)
            return 0.0

    def succeeded(self, address: str, name: str) -> None:
        ip, user = self.keys(address, name)
        with self._lock:
            self._fails.pop(user, None)
            count, last = self._fails.get(ip, (0, 0.0))
            if count > 1:
                self._fails[ip] = (count - 1, last)
            else:
                self._fails.pop(ip, None)
