"""Password files in Mosquitto's format (``user:$7$iterations$salt$hash``, PBKDF2-SHA512).

Legacy ``$6$salt$hash`` entries (Mosquitto 1.x, ``mosquitto_passwd -H sha512``) are verified too.

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
_MAX_ITERATIONS = 10_000_000


def hash_password(password: str, *, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None) -> str:
    salt = salt or os.urandom(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Check a password against a ``$7$`` (PBKDF2-SHA512) or legacy ``$6$`` (salted SHA512) hash.

    False for any malformed hash, never an exception.
    """
    parts = encoded.split("$")
    try:
        if len(parts) == 5 and parts[:2] == ["", "7"]:
            iterations = int(parts[2])
            if not 1 <= iterations <= _MAX_ITERATIONS:
                return False
            salt = base64.b64decode(parts[3], validate=True)
            expected = base64.b64decode(parts[4], validate=True)
            digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
        elif len(parts) == 4 and parts[:2] == ["", "6"]:
            # Mosquitto 1.x and `mosquitto_passwd -H sha512`: sha512(password + salt)
            salt = base64.b64decode(parts[2], validate=True)
            expected = base64.b64decode(parts[3], validate=True)
            digest = hashlib.sha512(password.encode() + salt).digest()
        else:
            return False
    except ValueError:  # bad number, bad base64, unencodable password
        return False
    return hmac.compare_digest(digest, expected)


def _well_formed(encoded: str) -> bool:
    return (encoded.startswith("$7$") and encoded.count("$") == 4) or (
        encoded.startswith("$6$") and encoded.count("$") == 3)


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
        user, sep, encoded = line.partition(":")  # Mosquitto splits at the first ':'
        if not sep or not user or not _well_formed(encoded):
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
