"""The line's labelled images on the edge: a local cache, deterministic splits, checks.

    cache = DatasetCache("var/edge/dataset")
    cache.add(png_bytes, brand="acme", label="scratch", sha256=expected)   # CacheError on mismatch
    data = cache.dataset("acme", known_classes=["good", "scratch", "spot"])
    splits = split(data, config)             # stratified train / validation / test, from the seed
    check_data(config, data, min_side=32)    # InvalidTrainingConfig with a precise reason

Cache layout: ``<root>/<brand>/<label>/<sha256>.png`` plus ``<root>/index.db`` (SQLite).
Files are content addressed, so a sample already cached is never fetched or stored twice.
The split depends only on the samples' sha256, their labels, the seed and the fractions:
not on the order samples arrived in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from edge_node.errors import CacheError, InvalidTrainingConfig
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    sha256 TEXT PRIMARY KEY, brand TEXT NOT NULL, label TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, source TEXT NOT NULL DEFAULT '', added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS samples_brand ON samples (brand, label);
"""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    sha256: str


@dataclass(frozen=True)
class Dataset:
    """The samples a task may train on; ``known_classes`` is every class the line's detectors know."""

    samples: tuple[Sample, ...]
    known_classes: tuple[str, ...] | None = None

    @classmethod
    def from_folder(cls, root: str | os.PathLike[str], known_classes: Sequence[str] | None = None) -> Dataset:
        """Images under ``root/<label>/``, one folder per class."""
        samples = [Sample(p, d.name, sha256_file(p))
                   for d in sorted(Path(root).iterdir()) if d.is_dir()
                   for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        return cls(tuple(samples), tuple(known_classes) if known_classes is not None else None)

    def counts(self) -> Counter[str]:
        return Counter(s.label for s in self.samples)

    def snapshot_id(self, classes: Iterable[str] | None = None) -> str:
        """A short id of exactly which samples (of ``classes``) a training used, for lineage."""
        keep = set(classes) if classes is not None else None
        lines = sorted(f"{s.label}:{s.sha256}" for s in self.samples if keep is None or s.label in keep)
        return "snap-" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Splits:
    train: tuple[Sample, ...]
    validation: tuple[Sample, ...]
    test: tuple[Sample, ...]


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class DatasetCache:
    """Content-addressed images of one edge, indexed by sha256; safe to use from several threads."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.root / "index.db", check_same_thread=False, isolation_level=None)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise CacheError(f"cannot open the dataset index in {self.root}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def has(self, sha256: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM samples WHERE sha256 = ?", (sha256,)).fetchone() is not None

    def add(self, data: bytes, *, brand: str, label: str, sha256: str | None = None, source: str = "") -> Sample:
        """Store one image (a no-op when cached); CacheError when ``sha256`` is given and does not match."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256.lower():
            raise CacheError(f"sample from {source or 'unknown source'} labelled {label!r}: sha256 is {digest}, "
                             f"expected {sha256.lower()}")
        for name, value in (("brand", brand), ("label", label)):
            if not value or "/" in value or "\\" in value or value.startswith("."):
                raise CacheError(f"invalid {name} {value!r}")
        rel = Path(brand, label, f"{digest}.png")
        path = self.root / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)  # the file is complete before the index names it
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (digest, brand, label, str(rel), len(data), source, time.time()))
        return Sample(path, label, digest)

    def samples(self, brand: str, classes: Iterable[str] | None = None) -> list[Sample]:
        with self._lock:
            rows = self._db.execute("SELECT path, label, sha256 FROM samples WHERE brand = ? ORDER BY sha256",
                                    (brand,)).fetchall()
        keep = set(classes) if classes is not None else None
        return [Sample(self.root / p, label, h) for p, label, h in rows if keep is None or label in keep]

    def dataset(self, brand: str, classes: Iterable[str] | None = None,
                known_classes: Sequence[str] | None = None) -> Dataset:
        return Dataset(tuple(self.samples(brand, classes)), tuple(known_classes) if known_classes else None)


def split(dataset: Dataset, config: TrainingConfig) -> Splits:
    """Stratified train / validation / test split of the config's classes.

    InvalidTrainingConfig when a class has too few samples for the fractions."""
    gen = config.generators
    parts: tuple[list[Sample], list[Sample], list[Sample]] = ([], [], [])
    by_label: dict[str, dict[str, Sample]] = {c: {} for c in config.classes}
    for s in dataset.samples:
        if s.label in by_label:
            by_label[s.label].setdefault(s.sha256, s)  # the same image twice would leak across splits
    for label, unique in by_label.items():
        items = [unique[h] for h in sorted(unique)]
        random.Random(f"{gen.seed}:{label}").shuffle(items)
        n = len(items)
        n_test = round(n * gen.test_split)
        n_val = max(1, round(n * gen.validation_split))
        if gen.test_split > 0:
            n_test = max(1, n_test)
        if n - n_val - n_test < 1:
            raise InvalidTrainingConfig(
                f"class {label!r} has {n} sample(s): too few for validation_split {gen.validation_split} and "
                f"test_split {gen.test_split} (needs at least {1 + n_val + n_test})")
        parts[2].extend(items[:n_test])
        parts[1].extend(items[n_test:n_test + n_val])
        parts[0].extend(items[n_test + n_val:])
    return Splits(*(tuple(p) for p in parts))


def check_data(config: TrainingConfig, dataset: Dataset, min_side: int) -> Splits:
    """Every check that needs the data; returns the split. InvalidTrainingConfig names the first problem."""
    counts = dataset.counts()
    if dataset.known_classes is not None:
        unknown = [c for c in config.classes if c not in dataset.known_classes]
        if unknown:
            raise InvalidTrainingConfig(f"unknown class(es) {unknown} in the training config; "
                                        f"the line's detectors know {list(dataset.known_classes)}")
    empty = [c for c in config.classes if counts[c] == 0]
    if empty:
        have = {c: counts[c] for c in config.classes if counts[c]}
        raise InvalidTrainingConfig(f"class(es) {empty} have no samples (samples per class: {have})")
    weights = config.generators.class_weights
    if isinstance(weights, dict):
        bad = {c: w for c, w in weights.items() if not w > 0}
        if bad:
            raise InvalidTrainingConfig(f"class_weights must be positive, got {bad}")
    splits = split(dataset, config)
    check_images([s for s in dataset.samples if s.label in set(config.classes)], min_side, config.architecture)
    return splits


def check_images(samples: Iterable[Sample], min_side: int, architecture: str) -> None:
    """Read each image's header: unreadable or smaller than ``min_side`` pixels -> InvalidTrainingConfig."""
    for s in samples:
        try:
            with Image.open(s.path) as img:
                width, height = img.size
        except (OSError, UnidentifiedImageError) as exc:
            raise InvalidTrainingConfig(f"image {s.path} (class {s.label!r}) cannot be read: {exc}") from None
        if min(width, height) < min_side:
            raise InvalidTrainingConfig(
                f"image {s.path} (class {s.label!r}) is {width}x{height}, smaller than the {min_side} px "
                f"minimum of architecture {architecture}")


def class_weights(config: TrainingConfig, train: Sequence[Sample]) -> dict[int, float] | None:
    """Keras ``class_weight`` from the config: explicit per class (others 1.0), or "balanced"."""
    weights = config.generators.class_weights
    if weights is None:
        return None
    if isinstance(weights, dict):
        return {i: float(weights.get(c, 1.0)) for i, c in enumerate(config.classes)}
    counts = Counter(s.label for s in train)
    total, k = len(train), len(config.classes)
    return {i: total / (k * counts[c]) if counts[c] else 1.0 for i, c in enumerate(config.classes)}
