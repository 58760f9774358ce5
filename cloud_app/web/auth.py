"""Login, logout, the current user, roles and CSRF.

Pages use a session cookie (log in with a form); scripts use an API token
(``Authorization: Bearer fab_...``). Roles rank viewer < engineer < admin:
``@require("engineer")`` lets engineers and admins in. Unauthenticated API calls get
401 JSON, pages redirect to the login form; a role too low gets 403.

CSRF: every state-changing request that relies on the session cookie must carry the
token (a form field, or the X-CSRFToken header for the dashboard's scripts);
bearer-token calls carry no cookie and are exempt.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import Blueprint, Flask, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response
from wtforms import ValidationError as WTFValidationError

from cloud_app.models import ApiToken, User
from cloud_app.users import authenticate, hash_token
from cloud_app.web.errors import ApiError, wants_json
from cloud_app.web.state import db, web_state

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)
RANK = {"viewer": 0, "engineer": 1, "admin": 2}
TOKEN_TOUCH_S = 60.0   # a token's last use is written at most this often
F = TypeVar("F", bound=Callable[..., Any])


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


def load_user() -> None:
    g.user = None
    g.via_token = False
    token = _bearer()
    if token is not None:
        g.via_token = True
        g.user = _token_user(token) if token else None
        return
    uid = session.get("uid")
    if uid is None:
        return
    user = db().get(User, uid)
    if user is None or not user.active or session.get("role") != user.role:
        session.clear()   # deleted, disabled, or its role changed: log in again
        return
    g.user = user


def _token_user(token: str) -> User | None:
    """The token's user, read without writing: its last use is recorded after the response (touch_token)."""
    row = db().scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False)))
    if row is None or not row.user.active:
        return None
    if row.last_used_at is None or time.time() - row.last_used_at > TOKEN_TOUCH_S:
        g.touch_token = row.id
    return row.user


def touch_token(_exc: BaseException | None = None) -> None:
    """Record a token's last use in a short transaction of its own, after the request's own has ended
    (reads stay read-only; a writer request has released its lock)."""
    token_id = g.pop("touch_token", None)
    if token_id is not None:
        try:
            with web_state().db.session() as s:
                row = s.get(ApiToken, token_id)
                if row is not None:
                    row.last_used_at = time.time()
        except SQLAlchemyError as exc:   # boundary: bookkeeping must not fail the request
            log.warning("could not record the use of API token %s: %s", token_id, exc)


def check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or g.via_token:
        return
    if wants_json() and g.user is None:
        return   # the view answers 401
    token = request.form.get("csrf_token") or request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token")
    try:
        validate_csrf(token)
    except WTFValidationError as exc:
        raise CSRFError(str(exc)) from None


def init_app(app: Flask) -> None:
    app.before_request(load_user)
    app.before_request(check_csrf)
    app.teardown_request(touch_token)
    app.jinja_env.globals["csrf_token"] = generate_csrf
    app.jinja_env.globals["has_role"] = has_role


def has_role(role: str) -> bool:
    user = g.get("user")
    return user is not None and RANK.get(user.role, -1) >= RANK[role]


def _unauthenticated() -> Any:
    if wants_json():
        raise ApiError(401, "authentication required: log in, or send Authorization: Bearer <token>")
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def require(role: str = "viewer") -> Callable[[F], F]:
    """Only users of ``role`` or above; 401 (or the login page) when nobody is logged in."""
    if role not in RANK:
        raise ValueError(f"unknown role {role!r}")

    def deco(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.get("user") is None:
                return _unauthenticated()
            if not has_role(role):
                raise ApiError(403, f"this needs the {role} role; you are {g.user.role}")
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return deco


login_required = require("viewer")


def _safe_next(target: str | None) -> str:
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and target.startswith("/") and not target.startswith("//"):
            return target
    return url_for("pages.fleet")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    next_url = request.args.get("next")
    if request.method == "GET":
        if g.user is not None:
            return redirect(_safe_next(next_url))
        return render_template("login.html", next=next_url)
    username = request.form.get("username", "").strip()
    user = authenticate(db(), username, request.form.get("password", ""))
    if user is None:
        log.info("failed login for %r from %s", username[:64], request.remote_addr)
        return render_template("login.html", next=next_url, username=username,
                               error="Wrong username or password."), 401
    session.clear()
    session["uid"] = user.id
    session["role"] = user.role
    log.info("user %s logged in", user.username)
    return redirect(_safe_next(next_url))


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
