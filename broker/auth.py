"""Password authentication against a Mosquitto-format password file, off the event loop.

amqtt verifies passwords on the event loop, so a reconnect storm stalls every
client. Here each check runs in a small thread pool (``auth_workers``);
``hashlib.pbkdf2_hmac`` releases the GIL while it hashes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fabbus.errors import ConfigError
from fabbus.passwords import hash_password, read_password_file, verify_password

log = logging.getLogger(__name__)


class Authenticator:
    """Checks username/password pairs; anonymous clients only when ``allow_anonymous``."""

    def __init__(self, password_file: Path | None, allow_anonymous: bool, workers: int) -> None:
        self.password_file = password_file
        self.allow_anonymous = allow_anonymous
        self._users: dict[str, str] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auth")
        self.reload()

    def reload(self) -> None:
        """(Re)read the password file; ConfigError if it is missing or malformed."""
        self._users = read_password_file(self.password_file) if self.password_file else {}
        log.info("%d users loaded from %s", len(self._users), self.password_file)

    async def check(self, username: str | None, password: bytes | None) -> bool:
        if username is None or self.password_file is None:
            return self.allow_anonymous
        encoded = self._users.get(username)
        if encoded is None or password is None:
            return False
        try:
            text = password.decode("utf-8")
        except UnicodeDecodeError:
            return False
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, verify_password, text, encoded)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def set_password(path: Path, username: str, password: str) -> None:
    """Add or replace one user in a Mosquitto password file (created 0600 if missing)."""
    if not username or ":" in username or any(c in username for c in "\r\n"):
        raise ConfigError(f"invalid username {username!r} (must be non-empty, without ':' or newlines)")
    if not password:
        raise ConfigError("empty password")
    lines: list[str] = []
    if path.exists():
        read_password_file(path)  # refuse to rewrite a malformed file
        lines = path.read_text(encoding="utf-8").splitlines()
    entry = f"{username}:{hash_password(password)}"
    kept = [ln for ln in lines if ln.strip().rpartition(":")[0] != username or ln.lstrip().startswith("#")]
    replaced = len(kept) != len(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join([*kept, entry]) + "\n", encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    log.info("%s user %s in %s", "updated" if replaced else "added", username, path)
