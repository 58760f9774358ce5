"""Hot swap: loading off the inspection path, atomic swap, probation with automatic rollback, rollback command.

Runners here are stand-ins (the loader is a function of the file's content), so that
these tests are about the swapping logic; test_delivery and test_inspection use real models.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from fabbus.messages import DeliveryState
from detector_node.hot_swap import ModelSlots, SwapEvent
from detector_node.model_store import ModelEntry, ModelStore
from detector_node.runtime import ModelLoadError


class FakeRunner:
    def __init__(self, brand: str, entry: ModelEntry) -> None:
        self.brand, self.entry = brand, entry


def loader(gate: threading.Event | None = None):  # noqa: ANN201
    def load(brand: str, path: Path, entry: ModelEntry) -> FakeRunner:
        if gate is not None:
            gate.wait(5)
        if path.read_bytes().startswith(b"bad"):
            raise ModelLoadError("wrong input shape: model.tflite takes [1, 32, 32, 3], meta.json says [1, 64, 64, 3]")
        return FakeRunner(brand, entry)
    return load


def deliver(store: ModelStore, content: bytes, model: str, version: int) -> tuple[Path, ModelEntry]:
    sha = hashlib.sha256(content).hexdigest()
    path = store.hold("a", store.model_path("a", sha, version))
    path.write_bytes(content)
    return path, ModelEntry(path.name, model, version, sha)


def setup(tmp_path: Path, probation: int = 3, gate: threading.Event | None = None):  # noqa: ANN201
    store = ModelStore(tmp_path, ["a"])
    events: list[SwapEvent] = []
    slots = ModelSlots(store, loader(gate), probation=probation, on_event=events.append).start()
    return store, slots, events


def states(events: list[SwapEvent]) -> list[str]:
    return [e.state.value for e in events]


def test_deploy_loads_beside_the_running_model_then_swaps(tmp_path: Path) -> None:
    gate = threading.Event()
    store, slots, events = setup(tmp_path, gate=gate)
    gate.set()
    slots.deploy("a", *deliver(store, b"one", "m1", 1))
    assert slots.drain()
    first = slots.get("a")
    gate.clear()
    slots.deploy("a", *deliver(store, b"two", "m2", 2))
    assert slots.get("a") is first  # still loading: inspection goes on with m1
    gate.set()
    assert slots.drain()
    assert slots.get("a").entry.model == "m2"
    assert states(events) == ["LOADING", "ACTIVE", "LOADING", "ACTIVE"]
    assert events[-1].previous.model == "m1"
    assert [e.model for e in store.entries("a")] == ["m2", "m1"]
    slots.close()


def test_model_that_fails_to_load_is_refused_and_current_stays(tmp_path: Path) -> None:
    store, slots, events = setup(tmp_path)
    slots.deploy("a", *deliver(store, b"one", "m1", 1))
    path, entry = deliver(store, b"bad model", "m2", 2)
    slots.deploy("a", path, entry)
    assert slots.drain()
    assert slots.get("a").entry.model == "m1"
    assert states(events)[-1] == "FAILED" and "wrong input shape" in events[-1].reason
    assert not path.exists() and store.active("a").model == "m1"
    slots.close()


def test_failure_on_probation_rolls_back_automatically(tmp_path: Path) -> None:
    store, slots, events = setup(tmp_path, probation=3)
    slots.deploy("a", *deliver(store, b"one", "m1", 1))
    slots.deploy("a", *deliver(store, b"two", "m2", 2))
    assert slots.drain()
    new = slots.get("a")
    assert slots.report(new, None) is False
    assert slots.report(new, "InferenceError: output is not finite: [nan nan]") is True
    assert slots.get("a").entry.model == "m1"  # swapped back at once, on the reporting thread
    assert slots.drain()
    rolled = events[-1]
    assert (rolled.state, rolled.entry.model, rolled.previous.model) == (DeliveryState.ROLLED_BACK, "m2", "m1")
    assert "failed on probation" in rolled.reason and "not finite" in rolled.reason
    assert [e.model for e in store.entries("a")] == ["m1"]
    slots.close()


def test_probation_ends_after_n_good_inferences(tmp_path: Path) -> None:
    store, slots, events = setup(tmp_path, probation=2)
    slots.deploy("a", *deliver(store, b"one", "m1", 1))
    slots.deploy("a", *deliver(store, b"two", "m2", 2))
    assert slots.drain()
    new = slots.get("a")
    slots.report(new, None)
    slots.report(new, None)
    assert not slots.on_probation("a")
    assert slots.report(new, "RuntimeError: boom") is False  # after probation: an error, not a rollback
    assert slots.get("a") is new
    slots.close()


def test_rollback_command_and_restart(tmp_path: Path) -> None:
    store, slots, events = setup(tmp_path)
    slots.rollback("a", "no model yet")
    slots.deploy("a", *deliver(store, b"one", "m1", 1))
    slots.deploy("a", *deliver(store, b"two", "m2", 2))
    slots.rollback("a", "operator asked")
    assert slots.drain()
    assert states(events) == ["FAILED", "LOADING", "ACTIVE", "LOADING", "ACTIVE", "ROLLED_BACK"]
    assert "no previous model" in events[0].reason and events[0].entry is None
    assert events[-1].reason == "rollback command: operator asked"
    assert slots.get("a").entry.model == "m1"
    slots.close()

    again = ModelSlots(ModelStore(tmp_path, ["a"]), loader())
    assert again.store.recover() == [] and again.restore() == []
    assert again.get("a").entry.model == "m1"


def test_restore_skips_a_model_that_no_longer_loads(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, ["a"])
    for content, model, version in [(b"one", "m1", 1), (b"bad now", "m2", 2)]:
        path, entry = deliver(store, content, model, version)
        store.activate("a", entry)
    slots = ModelSlots(store, loader())
    problems = slots.restore()
    assert slots.get("a").entry.model == "m1"
    assert len(problems) == 1 and "m2 does not load" in problems[0]
