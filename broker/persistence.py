"""Retained messages and persistent sessions in a SQLite file (stdlib sqlite3, WAL mode).

The event loop only enqueues write operations; one writer thread applies them in
small batched transactions, so a restart (or a crash, minus the last few
milliseconds) keeps retained messages, persistent sessions' subscriptions, their
queued messages and their unacknowledged in-flight messages. State is read once,
synchronously, before the broker listens.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from fabbus.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, username TEXT);
CREATE TABLE IF NOT EXISTS subscriptions (
    client_id TEXT NOT NULL, filter TEXT NOT NULL, qos INTEGER NOT NULL, PRIMARY KEY (client_id, filter));
CREATE TABLE IF NOT EXISTS messages (
    client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, packet_id INTEGER, released INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq));
"""
_BATCH = 2000
_CORRUPT_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_STOP = object()


@dataclass(slots=True)
class StoredMessage:
    """A message owed to a persistent session: queued (packet_id None) or in flight."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    packet_id: int | None = None
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent


@dataclass
class StoredSession:
    client_id: str
    username: str | None
    subscriptions: dict[str, int] = field(default_factory=dict)
    messages: list[StoredMessage] = field(default_factory=list)


@dataclass
class State:
    retained: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    sessions: dict[str, StoredSession] = field(default_factory=dict)
    next_seq: int = 1


class StateStore:
    """Write-behind SQLite persistence; with ``path`` None every write is a no-op."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._q: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.enabled = path is not None

    # ---- startup

    def load(self) -> State:
        """Open (creating or recovering) the file, read the saved state and start the writer."""
        if self.path is None:
            return State()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot create its folder: {exc.strerror}") from None
        try:
            state = self._read()
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _CORRUPT_CODES:
                raise ConfigError(f"{self.path}: cannot use persistence file: {exc}") from None
            aside = self._move_aside()
            log.warning("persistence file %s is unreadable (%s); moved it to %s and started with an empty state",
                        self.path, exc, aside)
            state = self._read()
        self._thread = threading.Thread(target=self._writer, name="persistence", daemon=True)
        self._thread.start()
        return state

    def _connect(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise ConfigError(f"{self.path}: cannot open persistence file: {exc}") from None
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _read(self) -> State:
        db = self._connect()
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"{self.path}: written by a newer broker (schema {version} > {SCHEMA_VERSION})")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return _read_state(db)
        finally:
            db.close()

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.replace(aside)
        for suffix in ("-wal", "-shm"):
            extra = self.path.with_name(self.path.name + suffix)
            if extra.exists():
                extra.replace(aside.with_name(aside.name + suffix))
        return aside

    # ---- writes (called on the event loop: enqueue only)

    def _put(self, sql: str, params: tuple[object, ...]) -> None:
        if self.enabled:
            self._q.put((sql, params))

    def retain(self, topic: str, payload: bytes, qos: int) -> None:
        self._put("INSERT OR REPLACE INTO retained VALUES (?, ?, ?)", (topic, payload, qos))

    def unretain(self, topic: str) -> None:
        self._put("DELETE FROM retained WHERE topic = ?", (topic,))

    def put_session(self, client_id: str, username: str | None) -> None:
        self._put("INSERT OR REPLACE INTO sessions VALUES (?, ?)", (client_id, username))

    def drop_session(self, client_id: str) -> None:
        for table in ("sessions", "subscriptions", "messages"):
            self._put(f"DELETE FROM {table} WHERE client_id = ?", (client_id,))  # noqa: S608 (fixed names)

    def put_subscription(self, client_id: str, filter_: str, qos: int) -> None:
        self._put("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?)", (client_id, filter_, qos))

    def drop_subscription(self, client_id: str, filter_: str) -> None:
        self._put("DELETE FROM subscriptions WHERE client_id = ? AND filter = ?", (client_id, filter_))

    def put_message(self, client_id: str, m: StoredMessage) -> None:
        self._put("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (client_id, m.seq, m.topic, m.payload, m.qos, int(m.retain), m.packet_id, int(m.released)))

    def mark_sent(self, client_id: str, m: StoredMessage) -> None:
        self._put("UPDATE messages SET packet_id = ?, released = ? WHERE client_id = ? AND seq = ?",
                  (m.packet_id, int(m.released), client_id, m.seq))

    def drop_message(self, client_id: str, seq: int) -> None:
        self._put("DELETE FROM messages WHERE client_id = ? AND seq = ?", (client_id, seq))

    # ---- writer thread

    def _writer(self) -> None:
        db = self._connect()
        try:
            while True:
                batch = [self._q.get()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                stop = self._apply(db, batch)
                if stop:
                    return
        finally:
            db.close()

    def _apply(self, db: sqlite3.Connection, batch: list[object]) -> bool:
        waiters, stop = [], False
        try:
            db.execute("BEGIN")
            for op in batch:
                if op is _STOP:
                    stop = True
                elif isinstance(op, threading.Event):
                    waiters.append(op)
                else:
                    db.execute(*op)  # type: ignore[misc]
            db.execute("COMMIT")
        except sqlite3.Error:
            log.exception("persistence write of %d operations failed", len(batch))
            if db.in_transaction:
                db.execute("ROLLBACK")
        for w in waiters:
            w.set()
        return stop

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every write enqueued so far is committed."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        """Commit what is pending and stop the writer."""
        if self._thread is not None and self._thread.is_alive():
            self._q.put(_STOP)
            self._thread.join(30)
        self._thread = None
        self.enabled = False


def _read_state(db: sqlite3.Connection) -> State:
    state = State()
    for topic, payload, qos in db.execute("SELECT topic, payload, qos FROM retained"):
        state.retained[topic] = (bytes(payload), qos)
    for client_id, username in db.execute("SELECT client_id, username FROM sessions"):
        state.sessions[client_id] = StoredSession(client_id, username)
    for client_id, filter_, qos in db.execute("SELECT client_id, filter, qos FROM subscriptions"):
        if client_id in state.sessions:
            state.sessions[client_id].subscriptions[filter_] = qos
    rows = db.execute("SELECT client_id, seq, topic, payload, qos, retain, packet_id, released FROM messages"
                      " ORDER BY seq")
    for client_id, seq, topic, payload, qos, retain, packet_id, released in rows:
        if client_id in state.sessions:
            state.sessions[client_id].messages.append(
                StoredMessage(seq, topic, bytes(payload), qos, bool(retain), packet_id, bool(released)))
        state.next_seq = max(state.next_seq, seq + 1)
    return state
