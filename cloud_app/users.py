"""Users, password hashes and API tokens.

    user = create_user(s, "alice", "secret", "engineer")
    authenticate(s, "alice", "secret")           # the User, or None
    token = create_api_token(s, user, "ci")       # shown once; only its sha256 is stored
    user_for_token(s, token)                      # the User, or None (revoked, inactive, unknown)

Passwords are hashed with werkzeug's scrypt; tokens are 32 random bytes (URL-safe),
stored as their sha256 (a token is random enough that a plain hash is the right tool).
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from cloud_app.errors import Conflict, Invalid
from cloud_app.models import ROLES, ApiToken, User, now

TOKEN_PREFIX = "fab_"
# checked against when the user is unknown, so that a wrong username costs as long as a wrong password
_DUMMY_HASH = generate_password_hash("not a password")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(s: Session, username: str, password: str, role: str) -> User:
    fields: dict[str, str] = {}
    if not username or len(username) > 64:
        fields["username"] = "must be 1 to 64 characters"
    if len(password) < 8:
        fields["password"] = "must be at least 8 characters"
    if role not in ROLES:
        fields["role"] = f"must be one of {list(ROLES)}"
    if fields:
        raise Invalid(fields)
    if s.scalar(select(User).where(User.username == username)) is not None:
        raise Conflict(f"user {username!r} exists", {"username": f"user {username!r} exists"})
    user = User(username=username, password_hash=generate_password_hash(password), role=role, active=True)
    s.add(user)
    s.flush()
    return user


def set_password(user: User, password: str) -> None:
    if len(password) < 8:
        raise Invalid({"password": "must be at least 8 characters"})
    user.password_hash = generate_password_hash(password)


def authenticate(s: Session, username: str, password: str) -> User | None:
    user = s.scalar(select(User).where(User.username == username))
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not user.active or not check_password_hash(user.password_hash, password):
        return None
    return user


def create_api_token(s: Session, user: User, name: str = "") -> str:
    """A new token for ``user``; the plain token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    s.add(ApiToken(user_id=user.id, name=name[:64], token_hash=hash_token(token)))
    s.flush()
    return token


def user_for_token(s: Session, token: str) -> User | None:
    row = s.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False)))
    if row is None or not row.user.active:
        return None
    row.last_used_at = now()
    return row.user


def revoke_api_token(s: Session, token_id: int) -> None:
    row = s.get(ApiToken, token_id)
    if row is not None:
        row.revoked = True
