"""Password files in Mosquitto's format (``user:$7$iterations$salt$hash``, PBKDF2-SHA512).

The same file serves the embedded broker and Mosquitto's ``password_file``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from fabbus.errors import ConfigError

DEFAULT_ITERATIONS = 101  # Mosquitto's own default; passwords here are random machine tokens
_SALT_BYTES = 12


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against a ``$7$`` hash; False for any malformed hash."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(digest, expected)


def read_password_file(path: str | Path) -> dict[str, str]:
    """username -> encoded hash; ConfigError naming the line of any malformed entry."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read password file: {exc.strerror}") from None
    users: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.rpartition(":")
        if not sep or not user or not encoded.startswith("$7$") or encoded.count("$") != 4:
            raise ConfigError(f"{p}:{n}: expected 'username:$7$iterations$salt$hash'")
        users[user] = encoded
    return users


def write_password_file(path: str | Path, credentials: dict[str, str]) -> None:
    """Write plain-text credentials hashed, one ``user:hash`` line each, mode 0600."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{user}:{hash_password(pw)}" for user, pw in sorted(credentials.items())]
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
