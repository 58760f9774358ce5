"""The station's model files: one folder per product brand, an atomic ``active`` pointer, rollback.

Layout under the params folder (``params_dir`` in the config)::

    <params>/<brand>/active.json                   the pointer: {"stack": [active, previous, ...]}
    <params>/<brand>/models/v0003-<sha16>.zip      model bundles, immutable once renamed in
    <params>/<brand>/models/.v0004-....zip.*.part  a delivery in progress (fabbus.assembler)

``stack[0]`` is the active model, ``stack[1]`` the previous one (kept for rollback),
at most ``keep`` entries; a model file no entry names is deleted, unless *held* (a
delivery that will be loaded). The pointer is written to a temp file, fsynced,
renamed over ``active.json`` with ``os.replace`` and the folder fsynced, so a power
cut leaves either the old or the new pointer, never a mix. A delivery assembles
into a temp file and renames it into ``models/`` only when complete and verified;
the pointer moves only once the model has loaded. So a power cut during a delivery
leaves the previous model active, and :meth:`ModelStore.recover` (at start)
deletes the temp files and model files that no pointer names, and drops entries
whose file is missing or fails its sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from detector_node.errors import DetectorError
from detector_node.names import check_name

log = logging.getLogger(__name__)

POINTER = "active.json"
MODELS = "models"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class StoreError(DetectorError):
    """The model store cannot do what was asked (unknown brand, bad pointer)."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of a brand as the pointer records it."""

    file: str  # name in <brand>/models/
    model: str  # model id (the registry's)
    version: int | None
    sha256: str
    activated_at: float = 0.0

    @classmethod
    def from_json(cls, data: dict) -> ModelEntry:
        entry = cls(str(data["file"]), str(data["model"]), data.get("version"), str(data["sha256"]),
                    float(data.get("activated_at", 0.0)))
        if not _SHA_RE.fullmatch(entry.sha256) or "/" in entry.file or entry.file.startswith("."):
            raise ValueError(f"bad entry {data!r}")
        return entry


def file_name(sha256: str, version: int | None) -> str:
    """The file name of a bundle: version and content hash (so one sha is one file)."""
    return f"v{version or 0:04d}-{sha256[:16]}.zip"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ModelStore:
    """Thread-safe: the delivery handler, the loader thread and the status publisher all use it."""

    def __init__(self, root: Path, brands: list[str], keep: int = 2) -> None:
        if keep < 2:
            raise ValueError("keep must be at least 2 (the active model and the previous one)")
        self.root = Path(root)
        self.keep = keep
        self.brands = [check_name("brand", b) for b in brands]
        self._lock = threading.Lock()
        self._stacks: dict[str, list[ModelEntry]] = {b: [] for b in self.brands}
        self._held: dict[str, Counter[str]] = {b: Counter() for b in self.brands}  # files not yet activated
        for brand in self.brands:
            (self.brand_dir(brand) / MODELS).mkdir(parents=True, exist_ok=True)

    # ---- paths ------------------------------------------------------------------------------------

    def _known(self, brand: str) -> str:
        if brand not in self._stacks:
            raise StoreError(f"brand {brand!r} is not configured on this station")
        return brand

    def brand_dir(self, brand: str) -> Path:
        return self.root / brand

    def model_path(self, brand: str, sha256: str, version: int | None) -> Path:
        """Where a delivered bundle with this hash and version is renamed to."""
        return self.brand_dir(self._known(brand)) / MODELS / file_name(sha256, version)

    def hold(self, brand: str, path: Path) -> Path:
        """Protect a delivered file from clean-up until :meth:`activate` or :meth:`discard`."""
        with self._lock:
            self._held[self._known(brand)][path.name] += 1
        return path

    def path_of(self, brand: str, entry: ModelEntry) -> Path:
        return self.brand_dir(self._known(brand)) / MODELS / entry.file

    # ---- reading ----------------------------------------------------------------------------------

    def entries(self, brand: str) -> list[ModelEntry]:
        with self._lock:
            return list(self._stacks[self._known(brand)])

    def active(self, brand: str) -> ModelEntry | None:
        stack = self.entries(brand)
        return stack[0] if stack else None

    def previous(self, brand: str) -> ModelEntry | None:
        stack = self.entries(brand)
        return stack[1] if len(stack) > 1 else None

    # ---- start-up ---------------------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Read every pointer, clean up what a crash left behind; returns the problems found (logged)."""
        problems: list[str] = []
        for brand in self.brands:
            problems += self._recover_brand(brand)
        for problem in problems:
            log.warning("model store: %s", problem)
        return problems

    def _recover_brand(self, brand: str) -> list[str]:
        problems: list[str] = []
        bdir = self.brand_dir(brand)
        (bdir / f".{POINTER}.tmp").unlink(missing_ok=True)
        stack = self._read_pointer(brand, problems)
        kept = []
        for entry in stack:
            path = bdir / MODELS / entry.file
            if not path.is_file():
                problems.append(f"{brand}: model file {entry.file} of {entry.model} is missing; entry dropped")
            elif sha256_file(path) != entry.sha256:
                problems.append(f"{brand}: model file {entry.file} fails its sha256; entry dropped")
            else:
                kept.append(entry)
        with self._lock:
            self._stacks[brand] = kept[: self.keep]
            if kept != stack:
                self._write_pointer_locked(brand)
            doomed = self._unreferenced_locked(brand)
        for path in doomed:
            what = "unfinished delivery file" if path.name.endswith(".part") else "model file no pointer names"
            problems.append(f"{brand}: removed {what} {path.name}")
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return problems

    def _read_pointer(self, brand: str, problems: list[str]) -> list[ModelEntry]:
        path = self.brand_dir(brand) / POINTER
        try:
            data = json.loads(path.read_bytes())
            return [ModelEntry.from_json(e) for e in data["stack"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{brand}: pointer {path} unreadable ({exc}); brand starts without a model")
            return []

    # ---- changes ----------------------------------------------------------------------------------

    def activate(self, brand: str, entry: ModelEntry) -> None:
        """Make ``entry`` (its file already in models/) the active model; the old one becomes previous."""
        if not self.path_of(brand, entry).is_file():
            raise StoreError(f"{brand}: model file {entry.file} is not in the store")
        entry = ModelEntry(entry.file, entry.model, entry.version, entry.sha256, time.time())
        with self._lock:
            self._release_locked(brand, entry.file)
            stack = [e for e in self._stacks[brand] if e.sha256 != entry.sha256]
            self._stacks[brand] = [entry, *stack][: self.keep]
            self._write_pointer_locked(brand)
            doomed = self._unreferenced_locked(brand)
        self._delete(doomed)
        log.info("%s: model %s v%s (%s) is active", brand, entry.model, entry.version, entry.sha256[:12])

    def rollback(self, brand: str) -> ModelEntry:
        """Drop the active model; the previous one becomes active and is returned. StoreError if none."""
        with self._lock:
            stack = self._stacks[self._known(brand)]
            if len(stack) < 2:
                raise StoreError(f"{brand}: no previous model to roll back to")
            self._stacks[brand] = stack[1:]
            self._write_pointer_locked(brand)
            doomed = self._unreferenced_locked(brand)
        self._delete(doomed)
        log.info("%s: rolled back from %s to %s", brand, stack[0].model, stack[1].model)
        return stack[1]

    def discard(self, brand: str, path: Path) -> None:
        """Release a held file and delete it, unless a pointer entry names it (or it is held again)."""
        with self._lock:
            self._release_locked(self._known(brand), path.name)
            named = {e.file for e in self._stacks[brand]} | set(self._held[brand])
        if path.name not in named and path.parent == self.brand_dir(brand) / MODELS:
            path.unlink(missing_ok=True)

    def _release_locked(self, brand: str, name: str) -> None:
        held = self._held[brand]
        if held[name] > 1:
            held[name] -= 1
        else:
            held.pop(name, None)

    def _write_pointer_locked(self, brand: str) -> None:
        data = {"brand": brand, "stack": [asdict(e) for e in self._stacks[brand]]}
        write_atomic(self.brand_dir(brand) / POINTER, json.dumps(data, indent=2).encode())

    def _unreferenced_locked(self, brand: str) -> list[Path]:
        named = {e.file for e in self._stacks[brand]} | set(self._held[brand])
        return [p for p in (self.brand_dir(brand) / MODELS).iterdir() if p.name not in named]

    @staticmethod
    def _delete(paths: list[Path]) -> None:
        for path in paths:
            log.info("model store: deleting %s (no longer active or previous)", path)
            path.unlink(missing_ok=True)
