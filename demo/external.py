"""The external services of a factory: a fresh PostgreSQL database, and a unique huey queue on Redis.

    db = FreshDatabase.create("postgresql://postgres@127.0.0.1:5432/postgres", "fabdemo_1a2b3c")
    db.url                      # postgresql+psycopg://postgres@127.0.0.1:5432/fabdemo_1a2b3c
    db.drop()
    clear_queue("redis://127.0.0.1:6379/0", "fabdemo-1a2b3c")      # the queue's keys, at stop
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def psycopg_url(url: str) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://) of a libpq URL."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)


def libpq_url(url: str) -> str:
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


@dataclass
class FreshDatabase:
    """A PostgreSQL database created for one factory and dropped when it stops."""

    admin_url: str
    name: str

    @property
    def url(self) -> str:
        base = libpq_url(self.admin_url).split("?", 1)[0].rsplit("/", 1)[0]
        return psycopg_url(f"{base}/{self.name}")

    @classmethod
    def create(cls, admin_url: str, name: str) -> FreshDatabase:
        import psycopg

        if not _NAME.match(name):
            raise ValueError(f"bad database name {name!r}")
        with psycopg.connect(libpq_url(admin_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        log.info("created PostgreSQL database %s", name)
        return cls(admin_url, name)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(libpq_url(self.admin_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        log.info("dropped PostgreSQL database %s", self.name)


def check_redis(url: str) -> None:
    """ConnectionError (redis') when Redis does not answer at ``url``."""
    import redis

    r = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        r.ping()
    finally:
        r.close()


def clear_queue(url: str, name: str) -> int:
    """Delete the keys of huey queue ``name``; how many."""
    import redis

    name = re.sub("[^a-z0-9]", "", name)  # as huey's RedisStorage cleans it
    r = redis.Redis.from_url(url, socket_connect_timeout=5)
    try:
        keys = list(r.scan_iter(f"huey.*{name}*"))
        if keys:
            r.delete(*keys)
        return len(keys)
    finally:
        r.close()
