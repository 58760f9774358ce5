"""Dashboard pages for accounts: users (admins) and the caller's API tokens."""

from __future__ import annotations

from typing import Any

from flask import flash, g, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response

from cloud_app.errors import CloudError
from cloud_app.models import ROLES, ApiToken, User
from cloud_app.users import create_api_token, create_user, revoke_api_token
from cloud_app.web.api import MAX_DB_INT
from cloud_app.web.api_admin import apply_user_changes
from cloud_app.web.auth import login_required, require
from cloud_app.web.pages import bp
from cloud_app.web.state import db


def _users_page(errors: dict[str, str] | None = None, values: dict[str, str] | None = None,
                status: int = 200) -> tuple[str, int]:
    users = list(db().scalars(select(User).order_by(User.username)))
    return render_template("users.html", users=users, roles=ROLES, errors=errors or {},
                           values=values or {"role": "engineer"}), status


@bp.get("/users")
@require("admin")
def users() -> Any:
    return _users_page()


@bp.post("/users")
@require("admin")
def add_user() -> Any:
    values = {k: request.form.get(k, "") for k in ("username", "role")}
    try:
        create_user(db(), values["username"].strip(), request.form.get("password", ""), values["role"])
    except CloudError as exc:
        db().rollback()
        return _users_page(exc.fields or {"form": exc.message}, values, 422)
    flash(f"User {values['username']} created.", "info")
    return redirect(url_for("pages.users"))


@bp.post("/users/<int:user_id>")
@require("admin")
def change_user(user_id: int) -> Response:
    user = db().get(User, user_id) if user_id <= MAX_DB_INT else None
    if user is None:
        flash("No such user.", "error")
        return redirect(url_for("pages.users"))
    role = request.form.get("role") or None
    active = {"1": True, "0": False}.get(request.form.get("active", ""))
    try:
        apply_user_changes(user, role=role if role in ROLES else None, active=active,
                           password=request.form.get("password") or None)
        flash(f"User {user.username} updated.", "info")
    except CloudError as exc:
        db().rollback()
        flash(f"Not changed: {exc.message}", "error")
    return redirect(url_for("pages.users"))


@bp.get("/account")
@login_required
def account(new_token: str | None = None) -> str:
    tokens = db().scalars(select(ApiToken).where(ApiToken.user_id == g.user.id).order_by(ApiToken.id))
    return render_template("account.html", tokens=list(tokens), new_token=new_token)


@bp.post("/account/tokens")
@login_required
def add_token() -> str:
    token = create_api_token(db(), g.user, request.form.get("name", "")[:64])
    return account(new_token=token)   # shown once, on this page only


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int) -> Response:
    row = db().get(ApiToken, token_id) if token_id <= MAX_DB_INT else None
    if row is not None and row.user_id == g.user.id:
        revoke_api_token(db(), row.id)
        flash("Token revoked.", "info")
    return redirect(url_for("pages.account"))
