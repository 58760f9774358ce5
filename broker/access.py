"""Topic authorization from a Mosquitto-format ACL file, with decisions cached per client.

:class:`fabbus.acl.AclFile` evaluates a rule list per call; the broker asks for
every message, so each client keeps its own topic -> decision caches. Without an
ACL file everything is allowed, as in Mosquitto.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fabbus.acl import AclFile

log = logging.getLogger(__name__)

_CACHE_LIMIT = 4096  # distinct topics remembered per client and action


class Access:
    """The broker's ACL; ``for_client`` gives the per-client view used on the hot path."""

    def __init__(self, acl_file: Path | None) -> None:
        self.acl_file = acl_file
        self.acl: AclFile | None = None
        self.reload()

    def reload(self) -> None:
        """(Re)read the ACL file; ConfigError if it is missing or malformed."""
        self.acl = AclFile.load(self.acl_file) if self.acl_file else None
        if self.acl is None:
            log.warning("no acl_file configured: every client may publish and subscribe everywhere")

    def for_client(self, username: str | None, client_id: str) -> ClientAccess:
        return ClientAccess(self.acl, username, client_id)


class ClientAccess:
    """One client's permissions; decisions are cached by topic."""

    __slots__ = ("_acl", "_pub", "_read", "client_id", "username")

    def __init__(self, acl: AclFile | None, username: str | None, client_id: str) -> None:
        self._acl = acl
        self.username = username
        self.client_id = client_id
        self._pub: dict[str, bool] = {}
        self._read: dict[str, bool] = {}

    def can_publish(self, topic: str) -> bool:
        try:
            return self._pub[topic]
        except KeyError:
            ok = self._acl is None or self._acl.can_publish(self.username, self.client_id, topic)
            if not ok:  # logged once per client and topic, then answered from the cache
                log.info("client %s (user %s) may not publish to %s; its messages there are dropped",
                         self.client_id, self.username, topic)
            return _remember(self._pub, topic, ok)

    def can_read(self, topic: str) -> bool:
        try:
            return self._read[topic]
        except KeyError:
            ok = self._acl is None or self._acl.can_read(self.username, self.client_id, topic)
            return _remember(self._read, topic, ok)

    def can_subscribe(self, filter_: str) -> bool:
        return self._acl is None or self._acl.can_subscribe(self.username, self.client_id, filter_)


def _remember(cache: dict[str, bool], topic: str, ok: bool) -> bool:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[topic] = ok
    return ok
