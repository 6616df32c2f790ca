"""REST views of accounts: who am I, users (admin only) and API tokens.

Owns ``/api/v1/{me,users,tokens}``. Users are managed by admins only; an
operator or admin creates and revokes their own tokens (an admin anyone's).
A token's secret appears once, in the answer that created it.
"""

from __future__ import annotations

from flask import jsonify
from sqlalchemy import select

from provisiond import lookup, users
from provisiond.model import ApiToken, User
from web.api import bp
from web.api.auth import actor, current, requires
from web.api.common import body, ctx, paginate, typed


@bp.get("/me")
def me():
    p = current()
    return jsonify({"id": p.user_id, "name": p.name, "role": p.role, "via": p.via})


@bp.get("/users")
@requires("admin")
def user_list():
    with ctx().db.reader() as s:
        return jsonify(paginate(s, select(User).order_by(User.id), users.user_dict))


@bp.post("/users")
@requires("admin")
def user_create():
    data = body({"name", "password", "role"}, {"name", "password"})
    with ctx().db.transaction() as s:
        user = users.create(
            s,
            typed(data, "name", str),
            typed(data, "password", str),
            typed(data, "role", str, "viewer"),
            actor(),
        )
        return jsonify(users.user_dict(user)), 201


@bp.get("/users/<ref>")
@requires("admin")
def user_show(ref: str):
    with ctx().db.reader() as s:
        return jsonify(users.user_dict(lookup.find(s, User, ref)))


@bp.patch("/users/<ref>")
@requires("admin")
def user_update(ref: str):
    data = body({"role", "password"})
    with ctx().db.transaction() as s:
        user = users.update(
            s,
            lookup.find(s, User, ref),
            actor(),
            role=typed(data, "role", str),
            password=typed(data, "password", str),
        )
        return jsonify(users.user_dict(user))


@bp.delete("/users/<ref>")
@requires("admin")
def user_delete(ref: str):
    with ctx().db.transaction() as s:
        users.delete(s, lookup.find(s, User, ref), actor())
    return "", 204


@bp.get("/tokens")
def token_list():
    p = current()
    query = select(ApiToken).order_by(ApiToken.id)
    if not p.can("admin"):
        query = query.where(ApiToken.user_id == p.user_id)
    with ctx().db.reader() as s:
        return jsonify(paginate(s, query, users.token_dict))


@bp.post("/tokens")
def token_create():
    data = body({"name", "user"}, {"name"})
    p = current()
    with ctx().db.transaction() as s:
        owner_ref = typed(data, "user", str)
        if owner_ref and owner_ref != p.name and not p.can("admin"):
            raise users.Invalid("only an admin may create tokens for another user", field="user")
        owner = lookup.find(s, User, owner_ref) if owner_ref else s.get(User, p.user_id)
        tok, secret = users.create_token(s, owner, typed(data, "name", str), actor())
        return jsonify({**users.token_dict(tok), "token": secret}), 201


@bp.delete("/tokens/<int:token_id>")
def token_delete(token_id: int):
    with ctx().db.transaction() as s:
        users.delete_token(s, users.find_token(s, token_id, current()), actor())
    return "", 204
