"""The model store: versioned files per brand, the atomic active pointer, rollback and crash recovery."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from detector_node.model_store import ModelEntry, ModelStore, StoreError, file_name


def put(store: ModelStore, brand: str, content: bytes, model: str, version: int) -> ModelEntry:
    """A delivered file, as the receiver leaves it in models/ (held until activated)."""
    sha = hashlib.sha256(content).hexdigest()
    path = store.hold(brand, store.model_path(brand, sha, version))
    path.write_bytes(content)
    return ModelEntry(path.name, model, version, sha)


def test_activate_keeps_previous_and_prunes_older(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a", "b"])
    e1, e2, e3 = (put(store, "a", f"model {i}".encode(), f"m{i}", i) for i in (1, 2, 3))
    store.activate("a", e1)
    store.activate("a", e2)
    assert (store.active("a").model, store.previous("a").model) == ("m2", "m1")
    store.activate("a", e3)
    assert [e.model for e in store.entries("a")] == ["m3", "m2"]
    assert sorted(p.name for p in (tmp_path / "a" / "models").iterdir()) == sorted([e2.file, e3.file])
    pointer = json.loads((tmp_path / "a" / "active.json").read_text())
    assert [e["model"] for e in pointer["stack"]] == ["m3", "m2"]
    assert store.active("b") is None


def test_rollback_returns_to_previous_and_deletes_the_dropped_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    e1, e2 = put(store, "a", b"one", "m1", 1), put(store, "a", b"two", "m2", 2)
    store.activate("a", e1)
    store.activate("a", e2)
    assert store.rollback("a").model == "m1"
    assert store.active("a").model == "m1" and store.previous("a") is None
    assert not store.path_of("a", e2).exists()
    with pytest.raises(StoreError, match="no previous model"):
        store.rollback("a")


def test_restart_comes_back_with_the_active_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    e1, e2 = put(store, "a", b"one", "m1", 1), put(store, "a", b"two", "m2", 2)
    store.activate("a", e1)
    store.activate("a", e2)
    again = ModelStore(tmp_path, ["a"])
    assert again.recover() == []
    assert [e.model for e in again.entries("a")] == ["m2", "m1"]


def test_power_cut_during_delivery_leaves_previous_model_and_cleans_temp_files(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    store.activate("a", put(store, "a", b"one", "m1", 1))
    models = tmp_path / "a" / "models"
    partial = models / f".{file_name('f' * 64, 2)}.x1y2.part"  # what fabbus.assembler leaves mid-transfer
    partial.write_bytes(b"half a model")
    orphan = models / file_name("e" * 64, 3)  # complete and renamed in, but the pointer never moved
    orphan.write_bytes(b"never activated")
    (tmp_path / "a" / ".active.json.tmp").write_text('{"stack": [')  # a pointer write cut short
    again = ModelStore(tmp_path, ["a"])
    problems = again.recover()
    assert again.active("a").model == "m1"
    assert not partial.exists() and not orphan.exists()
    assert not (tmp_path / "a" / ".active.json.tmp").exists()
    assert any("unfinished delivery" in p for p in problems)


def test_corrupt_active_file_falls_back_to_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    e1, e2 = put(store, "a", b"one", "m1", 1), put(store, "a", b"two", "m2", 2)
    store.activate("a", e1)
    store.activate("a", e2)
    store.path_of("a", e2).write_bytes(b"bit rot")
    again = ModelStore(tmp_path, ["a"])
    problems = again.recover()
    assert again.active("a").model == "m1"
    assert any("fails its sha256" in p for p in problems)
    assert [e["model"] for e in json.loads((tmp_path / "a" / "active.json").read_text())["stack"]] == ["m1"]


def test_unreadable_pointer_is_reported(tmp_path: Path) -> None:
    ModelStore(tmp_path, ["a"])
    (tmp_path / "a" / "active.json").write_text("{not json")
    again = ModelStore(tmp_path, ["a"])
    assert any("unreadable" in p for p in again.recover())
    assert again.active("a") is None


def test_held_file_survives_cleanup_until_discarded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    pending = put(store, "a", b"pending", "m9", 9)
    store.activate("a", put(store, "a", b"one", "m1", 1))  # prunes unreferenced files, not held ones
    assert store.path_of("a", pending).exists()
    store.discard("a", store.path_of("a", pending))
    assert not store.path_of("a", pending).exists()


def test_unknown_brand_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    with pytest.raises(StoreError, match="not configured"):
        store.model_path("zzz", "0" * 64, 1)
