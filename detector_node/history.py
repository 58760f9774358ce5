"""The station's image history: PNG files on disk plus a SQLite index, bounded in size.

Layout under the history root::

    <root>/index.db                                   SQLite index (table ``samples``)
    <root>/<brand>/<label>/<YYYYMMDD>/<id>.png        one image per sample (UTC day)

``label`` is the ground truth (a class name such as ``good`` or ``scratch``), the
verdict is what the station answered (``OK``/``NG``, or none for imported images).
Every sample gets a ``cursor``: an integer that only grows (SQLite AUTOINCREMENT,
never reused, even after cleanup), so a reader that remembers the last cursor it
saw lists exactly the newer samples. ``id`` is 32 hex digits (uuid4).

Total image bytes stay under ``max_bytes``: after each add, the oldest samples
(lowest cursor) are deleted until the total fits; the newest is always kept. A file
is written (temp file, then rename) before its index row, and a row deleted before
its file, so the index never names a file that was not completely written.

Thread-safe: the inspection loop adds while the HTTP server lists and reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from detector_node.errors import HistoryError, SampleNotFound
from detector_node.names import check_name

log = logging.getLogger(__name__)

ID_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_LIST = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    cursor  INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    brand   TEXT NOT NULL,
    label   TEXT NOT NULL,
    verdict TEXT,
    size    INTEGER NOT NULL,
    sha256  TEXT NOT NULL,
    time    REAL NOT NULL,
    path    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_brand ON samples (brand, cursor);
"""
_COLUMNS = "cursor, id, brand, label, verdict, size, sha256, time, path"


class HistoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    root: Path = Field(default=Path("var/detector/history"), description="folder of the history")
    max_bytes: int = Field(default=2 * 1024**3, ge=1, description="total image bytes kept; oldest deleted first")
    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level: 1 is fast, 9 small")


@dataclass(frozen=True)
class Sample:
    cursor: int
    id: str
    brand: str
    label: str
    verdict: str | None
    size: int  # bytes of the image file
    sha256: str
    time: float  # seconds since the epoch, UTC
    path: str  # relative to the history root, '/'-separated

    def to_json(self) -> dict:
        """The fields an edge sees (no file path)."""
        data = asdict(self)
        del data["path"]
        return data


def encode_png(image: np.ndarray | Image.Image, compress_level: int = 1) -> bytes:
    """PNG bytes of an RGB uint8 array (H, W, 3) or a Pillow image."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {image.dtype} {image.shape}")
        image = Image.fromarray(image, "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


class History:
    def __init__(self, config: HistoryConfig) -> None:
        self.config = config
        self.root = config.root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the index and the byte total
        self._fs_lock = threading.Lock()  # creating and removing folders
        self._db = sqlite3.connect(self.root / "index.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._total = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM samples").fetchone()[0]
        self._closed = False

    # ---- writing --------------------------------------------------------------------------------

    def add(self, image: np.ndarray | Image.Image, brand: str, label: str, verdict: str | None = None,
            when: float | None = None) -> Sample:
        """Store one image; returns its sample. Deletes the oldest samples if over ``max_bytes``."""
        check_name("brand", brand)
        check_name("label", label)
        if verdict is not None:
            check_name("verdict", verdict)
        data = encode_png(image, self.config.png_compress_level)
        when = time.time() if when is None else when
        sample_id = uuid.uuid4().hex
        rel = f"{brand}/{label}/{time.strftime('%Y%m%d', time.gmtime(when))}/{sample_id}.png"
        path = self.root / rel
        tmp = path.with_suffix(".tmp")
        with self._fs_lock:  # a cleanup must not remove the folder between mkdir and rename
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
        sha = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._check_open()
            cur = self._db.execute(
                "INSERT INTO samples (id, brand, label, verdict, size, sha256, time, path)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sample_id, brand, label, verdict, len(data), sha, when, rel),
            )
            self._total += len(data)
            sample = Sample(cur.lastrowid, sample_id, brand, label, verdict, len(data), sha, when, rel)
            doomed = self._cleanup_locked()
        self._delete_files(doomed)
        return sample

    def _cleanup_locked(self) -> list[str]:
        """Drop the oldest rows until the total fits; returns their file paths (deleted after the lock)."""
        doomed: list[str] = []
        while self._total > self.config.max_bytes:
            rows = self._db.execute(
                "SELECT cursor, size, path FROM samples WHERE cursor < (SELECT MAX(cursor) FROM samples) "
                "ORDER BY cursor LIMIT 64"
            ).fetchall()
            if not rows:
                break
            taken = []
            for cursor, size, path in rows:
                if self._total <= self.config.max_bytes:
                    break
                taken.append(cursor)
                doomed.append(path)
                self._total -= size
            self._db.executemany("DELETE FROM samples WHERE cursor = ?", [(c,) for c in taken])
        if doomed:
            log.info("history over %s bytes: deleted %s oldest samples", self.config.max_bytes, len(doomed))
        return doomed

    def _delete_files(self, rels: Iterable[str]) -> None:
        for rel in rels:
            path = self.root / rel
            path.unlink(missing_ok=True)
            with self._fs_lock, contextlib.suppress(OSError):  # the day, label and brand folders, once empty
                for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
                    parent.rmdir()

    # ---- reading --------------------------------------------------------------------------------

    def list(self, cursor: int = 0, limit: int = 100, brand: str | None = None,
             labels: Iterable[str] | None = None) -> tuple[list[Sample], int]:
        """Samples with a cursor above ``cursor``, oldest first, and the cursor to ask from next."""
        if not isinstance(cursor, int) or cursor < 0:
            raise HistoryError(f"cursor must be an integer >= 0, got {cursor!r}")
        if not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise HistoryError(f"limit must be an integer in 1..{MAX_LIST}, got {limit!r}")
        sql, args = f"SELECT {_COLUMNS} FROM samples WHERE cursor > ?", [cursor]
        try:
            if brand is not None:
                sql, args = sql + " AND brand = ?", [*args, check_name("brand", brand)]
            if labels is not None:
                labels = [check_name("label", label) for label in ([labels] if isinstance(labels, str) else labels)]
                sql, args = sql + f" AND label IN ({', '.join('?' * len(labels))})", [*args, *labels]
        except ValueError as exc:
            raise HistoryError(str(exc)) from None
        with self._lock:
            self._check_open()
            rows = self._db.execute(sql + " ORDER BY cursor LIMIT ?", [*args, limit]).fetchall()
        samples = [Sample(*row) for row in rows]
        return samples, samples[-1].cursor if samples else cursor

    def get(self, sample_id: str) -> Sample:
        if not isinstance(sample_id, str) or not ID_RE.fullmatch(sample_id):
            raise HistoryError(f"invalid sample id {str(sample_id)[:80]!r}")
        with self._lock:
            self._check_open()
            row = self._db.execute(f"SELECT {_COLUMNS} FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if row is None:
            raise SampleNotFound(f"no sample {sample_id}")
        return Sample(*row)

    def open(self, sample_id: str) -> tuple[Sample, BinaryIO]:
        """The sample and its image file, open for reading (the caller closes it)."""
        sample = self.get(sample_id)
        path = (self.root / sample.path).resolve()
        if not path.is_relative_to(self.root):  # the index is ours, but never serve outside the root
            raise HistoryError(f"sample {sample_id} points outside the history")
        try:
            return sample, path.open("rb")
        except FileNotFoundError:
            raise SampleNotFound(f"no sample {sample_id} (cleaned up)") from None

    def read_bytes(self, sample_id: str) -> tuple[Sample, bytes]:
        sample, f = self.open(sample_id)
        with f:
            return sample, f.read()

    def stats(self) -> dict:
        with self._lock:
            self._check_open()
            count, last = self._db.execute("SELECT COUNT(*), COALESCE(MAX(cursor), 0) FROM samples").fetchone()
            return {"count": count, "total_bytes": self._total, "last_cursor": last, "max_bytes": self.config.max_bytes}

    # ---- lifecycle ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise HistoryError("history is closed")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
