"""Engine, sessions and migrations of the cloud database.

    db = Database("sqlite:////abs/cloud.db")      # or postgresql+psycopg://user@host/db
    db.migrate()                                   # alembic upgrade head (idempotent)
    with db.session() as s:                        # commits on success, rolls back on error
        s.add(...)
    with db.session(readonly=True) as s:           # queries (no write lock on SQLite)
        ...
    db.close()

SQLite runs in WAL mode with a busy timeout and foreign keys on, so that the web
process, the huey workers and the listener can share one file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 30
MIGRATION_LOCK = 0x6661625F636C64  # any constant shared by the cloud processes


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; for SQLite, the file's folder is created and pragmas set on each connection."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(u, pool_pre_ping=True, **kwargs)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}, **kwargs)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, record: Any) -> None:
        # pysqlite's own transaction handling would defer BEGIN; take control so that writers lock early
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # writers take the lock at BEGIN (a deferred read-then-write cannot wait for a busy lock);
        # read-only sessions (Database.session(readonly=True)) begin deferred and never block writers in WAL
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE")

    return engine


def alembic_config(url: str) -> AlembicConfig:
    """Alembic's configuration, built in code (no alembic.ini needed)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Database:
    """One engine and its session factory."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._readers = sessionmaker(self.engine.execution_options(readonly=True), expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def migrate(self, revision: str = "head") -> None:
        """Apply the migrations up to ``revision`` on this database."""
        self._alembic(command.upgrade, revision)

    def downgrade(self, revision: str) -> None:
        """Undo the migrations above ``revision`` ("base": all of them)."""
        self._alembic(command.downgrade, revision)

    def _alembic(self, fn: Any, revision: str) -> None:
        cfg = alembic_config(self.url)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":  # web, worker and listener may start (and migrate) at once
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
            cfg.attributes["connection"] = conn
            fn(cfg, revision)
        log.info("database %s migrated to %s", self.engine.url.render_as_string(hide_password=True), revision)

    @contextmanager
    def session(self, readonly: bool = False) -> Iterator[Session]:
        """A session in a transaction: committed when the block ends, rolled back on an exception.

        ``readonly=True`` for queries: on SQLite it does not take the write lock.
        """
        with (self._readers if readonly else self.sessions)() as s, s.begin():
            yield s

    def close(self) -> None:
        self.engine.dispose()
