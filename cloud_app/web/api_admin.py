"""The caller, API tokens (any user, for their own scripts) and users (admins only)."""

from __future__ import annotations

from typing import Any

from flask import g
from sqlalchemy import func, select

from cloud_app.errors import Conflict
from cloud_app.models import ApiToken, User
from cloud_app.users import create_api_token, create_user, revoke_api_token, set_password
from cloud_app.web.api import MAX_DB_INT, operation, reply
from cloud_app.web.errors import not_found
from cloud_app.web.schemas import (CreateTokenRequest, CreateUserRequest, NewTokenOut, TokenListOut, UpdateUserRequest,
                                   UserListOut, UserOut)
from cloud_app.web.state import db


def user_dict(u: User) -> dict[str, Any]:
    return {"id": u.id, "username": u.username, "role": u.role, "active": u.active, "created_at": u.created_at}


def token_dict(t: ApiToken) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "created_at": t.created_at, "last_used_at": t.last_used_at,
            "revoked": t.revoked}


@operation("GET", "/me", tag="users", summary="The caller", response=UserOut)
def get_me() -> Any:
    return reply(user_dict(g.user))


@operation("GET", "/tokens", tag="users", summary="The caller's API tokens", response=TokenListOut)
def list_tokens() -> Any:
    rows = db().scalars(select(ApiToken).where(ApiToken.user_id == g.user.id).order_by(ApiToken.id))
    return reply({"tokens": [token_dict(t) for t in rows]})


@operation("POST", "/tokens", tag="users", summary="Create an API token for the caller",
           body=CreateTokenRequest, response=NewTokenOut, status=201, errors=(422,))
def create_token(req: CreateTokenRequest) -> Any:
    """The token is in the answer once; send it as ``Authorization: Bearer <token>``."""
    s = db()
    token = create_api_token(s, g.user, req.name)
    row = s.scalars(select(ApiToken).where(ApiToken.user_id == g.user.id).order_by(ApiToken.id.desc())).first()
    return reply({**token_dict(row), "token": token}, 201)


@operation("DELETE", "/tokens/<int:token_id>", tag="users", summary="Revoke one of the caller's tokens",
           errors=(404,), status=204)
def delete_token(token_id: int) -> Any:
    s = db()
    row = s.get(ApiToken, token_id) if token_id <= MAX_DB_INT else None
    if row is None or (row.user_id != g.user.id and g.user.role != "admin"):
        raise not_found("token", token_id)
    revoke_api_token(s, row.id)
    return "", 204


@operation("GET", "/users", tag="users", summary="All users", response=UserListOut, role="admin")
def list_users() -> Any:
    return reply({"users": [user_dict(u) for u in db().scalars(select(User).order_by(User.username))]})


@operation("POST", "/users", tag="users", summary="Create a user", body=CreateUserRequest, response=UserOut,
           status=201, role="admin", errors=(409, 422))
def add_user(req: CreateUserRequest) -> Any:
    user = create_user(db(), req.username, req.password, req.role)
    return reply(user_dict(user), 201)


@operation("PATCH", "/users/<int:user_id>", tag="users", summary="Change a user's role, password or active flag",
           body=UpdateUserRequest, response=UserOut, role="admin", errors=(404, 409, 422))
def update_user(user_id: int, req: UpdateUserRequest) -> Any:
    s = db()
    user = s.get(User, user_id) if user_id <= MAX_DB_INT else None
    if user is None:
        raise not_found("user", user_id)
    apply_user_changes(user, role=req.role, active=req.active, password=req.password)
    return reply(user_dict(user))


def apply_user_changes(user: User, *, role: str | None, active: bool | None, password: str | None) -> None:
    """Shared by the API and the users page; the last active admin cannot be demoted or disabled."""
    s = db()
    losing_admin = user.role == "admin" and user.active and (
        (role is not None and role != "admin") or active is False)
    if losing_admin:
        admins = s.scalar(select(func.count()).select_from(User).where(User.role == "admin", User.active.is_(True)))
        if (admins or 0) <= 1:
            raise Conflict("the last active admin cannot be demoted or disabled",
                           {"role": "the last active admin cannot be demoted or disabled"})
    if role is not None:
        user.role = role
    if active is not None:
        user.active = active
    if password is not None:
        set_password(user, password)
