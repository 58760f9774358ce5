"""Data collection: the named detectors' image histories, synced incrementally into the edge's dataset cache.

    collector = Collector(config, DatasetCache(workdir / "dataset"), workdir / "collection.db")
    got = collector.collect("t-42", ["d1", "d2"], "acme", ["good", "scratch"], check=job.check,
                            report=reporter.publish)
    got.dataset, got.snapshot, got.details
    collector.close()

Per detector, brand and label the edge remembers the last history cursor it synced
(``collection.db``), so a sync lists only newer samples; a sample whose sha256 the
cache already holds is never downloaded again (content addressed). Every download is
checked against the listed sha256 and retried ``collection.retries`` times, then the
task FAILS naming the sample. The dataset of a task is every sample the named
detectors ever gave of the brand and classes (also those the detectors have since
dropped from their bounded history). Images travel over the plant network only: the
bus sees CollectionProgress counters, never a byte of an image.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_node.config import EdgeConfig
from edge_node.dataset import Dataset, DatasetCache
from edge_node.history_client import CollectionError, HistoryClient, RemoteSample
from fabbus.messages import CollectionProgress

log = logging.getLogger(__name__)

Report = Callable[..., Any]        # report(CollectionProgress, force=bool)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    detector TEXT NOT NULL, brand TEXT NOT NULL, label TEXT NOT NULL, cursor INTEGER NOT NULL,
    PRIMARY KEY (detector, brand, label)
);
CREATE TABLE IF NOT EXISTS samples (
    detector TEXT NOT NULL, id TEXT NOT NULL, brand TEXT NOT NULL, label TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, PRIMARY KEY (detector, id)
);
CREATE INDEX IF NOT EXISTS samples_brand ON samples (brand, label);
"""


@dataclass
class Collected:
    dataset: Dataset
    snapshot: str
    details: dict[str, Any] = field(default_factory=dict)


class CollectionIndex:
    """Which detector gave which sample, and the cursor each detector's history was synced to."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def cursor(self, detector: str, brand: str, label: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT cursor FROM cursors WHERE detector = ? AND brand = ? AND label = ?",
                                   (detector, brand, label)).fetchone()
        return row[0] if row else 0

    def commit(self, detector: str, samples: list[RemoteSample], cursors: dict[tuple[str, str], int]) -> None:
        """Record what a sync brought and the cursors it reached, in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                                     [(detector, s.id, s.brand, s.label, s.sha256, s.size) for s in samples])
                self._db.executemany("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?, ?)",
                                     [(detector, brand, label, c) for (brand, label), c in cursors.items()])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def count(self, detector: str, brand: str, labels: Iterable[str]) -> int:
        labels = list(labels)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM samples WHERE detector = ? AND brand = ? AND label IN "
                                    f"({', '.join('?' * len(labels))})", (detector, brand, *labels)).fetchone()[0]

    def hashes(self, detectors: Iterable[str], brand: str, labels: Iterable[str]) -> set[str]:
        dets, labels = list(detectors), list(labels)
        with self._lock:
            rows = self._db.execute(
                f"SELECT sha256 FROM samples WHERE brand = ? AND detector IN ({', '.join('?' * len(dets))}) "
                f"AND label IN ({', '.join('?' * len(labels))})", (brand, *dets, *labels)).fetchall()
        return {r[0] for r in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Collector:
    def __init__(self, config: EdgeConfig, cache: DatasetCache, index_path: Path) -> None:
        self.config, self.cache = config, cache
        self.index = CollectionIndex(index_path)
        self._clients: dict[str, HistoryClient] = {}

    def client(self, detector: str) -> HistoryClient:
        if detector not in self._clients:
            self._clients[detector] = HistoryClient(detector, self.config.detectors[detector],
                                                    self.config.collection.timeout_s)
        return self._clients[detector]

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self.index.close()

    def collect(self, task: str, detectors: list[str], brand: str, classes: list[str], *,
                check: Callable[[], None] = lambda: None, report: Report = lambda *a, **k: None) -> Collected:
        """Sync each detector, then the task's dataset; CollectionError when a detector fails
        (unless ``collection.continue_on_error`` and another one succeeded)."""
        stats: dict[str, dict[str, int]] = {}
        skipped: dict[str, str] = {}
        for det in detectors:
            check()
            try:
                stats[det] = self.sync(task, det, brand, classes, check=check, report=report)
            except CollectionError as exc:
                if not self.config.collection.continue_on_error:
                    raise
                log.warning("task %s: skipping detector %s: %s", task, det, exc)
                skipped[det] = str(exc)
        if skipped and not stats:
            raise CollectionError("; ".join(skipped.values()))
        wanted = self.index.hashes(detectors, brand, classes)
        samples = tuple(s for s in self.cache.samples(brand, classes) if s.sha256 in wanted)
        dataset = Dataset(samples, tuple(self.config.brands[brand].classes))
        snapshot = dataset.snapshot_id(classes)
        details: dict[str, Any] = {"data_snapshot": snapshot, "samples": len(samples),
                                   "samples_per_class": dict(dataset.counts()), "collection": stats}
        if skipped:
            details["skipped_detectors"] = skipped
        log.info("task %s: %s sample(s) of %s %s from %s (snapshot %s)", task, len(samples), brand, classes,
                 detectors, snapshot)
        return Collected(dataset, snapshot, details)

    def sync(self, task: str, det: str, brand: str, classes: list[str], *,
             check: Callable[[], None] = lambda: None, report: Report = lambda *a, **k: None) -> dict[str, int]:
        """Bring the cache up to date with one detector's history of ``brand`` and ``classes``."""
        client, page = self.client(det), self.config.collection.page_size
        listed: list[RemoteSample] = []
        cursors: dict[tuple[str, str], int] = {}
        for label in classes:
            cursor = self.index.cursor(det, brand, label)
            while True:
                check()
                samples, cursor = client.list(cursor, page, brand, label)
                listed.extend(samples)
                if len(samples) < page:
                    break
            cursors[(brand, label)] = cursor
        known = self.index.count(det, brand, classes)
        st = {"listed": len(listed), "known": known, "fetched": 0, "cached": 0, "gone": 0, "bytes": 0}

        def progress(force: bool = False) -> None:
            total, done = known + len(listed), known + st["fetched"] + st["cached"] + st["gone"]
            report(CollectionProgress(task=task, detector=det, samples_total=total, samples_fetched=st["fetched"],
                                      samples_cached=known + st["cached"], bytes_fetched=st["bytes"],
                                      percent=100.0 * done / total if total else 100.0), force=force)

        progress(force=True)
        synced: list[RemoteSample] = []
        for s in listed:
            check()
            if self.cache.has(s.sha256):
                st["cached"] += 1
            else:
                data = self._download(client, s)
                if data is None:
                    st["gone"] += 1
                    log.info("detector %s dropped sample %s before it was fetched", det, s.id)
                    progress()
                    continue
                self.cache.add(data, brand=brand, label=s.label, sha256=s.sha256, source=det)
                st["fetched"] += 1
                st["bytes"] += len(data)
            synced.append(s)
            progress()
        self.index.commit(det, synced, cursors)  # a sync killed before this is listed again, downloads cached
        progress(force=True)
        log.info("task %s: detector %s synced: %s", task, det, st)
        return st

    def _download(self, client: HistoryClient, s: RemoteSample) -> bytes | None:
        attempts = self.config.collection.retries + 1
        digest = ""
        for attempt in range(1, attempts + 1):
            data = client.download(s)
            if data is None:
                return None
            digest = hashlib.sha256(data).hexdigest()
            if digest == s.sha256:
                return data
            log.warning("detector %s: sample %s arrived corrupt (attempt %s of %s)", client.detector, s.id,
                        attempt, attempts)
        raise CollectionError(f"detector {client.detector} sent corrupt data for sample {s.id} ({s.label}): "
                              f"sha256 {digest[:12]}... instead of {s.sha256[:12]}... in {attempts} attempt(s)")
