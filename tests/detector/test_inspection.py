"""The inspection loop with real LiteRT models and the MCU simulator on a pty.

Each test wires a station by hand (no bus): MCU simulator -> serial link -> Inspector
-> ModelSlots (real loads) -> RES back to the simulator, images into a history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import time
from pathlib import Path

import pytest

from detector_node.history import History, HistoryConfig
from detector_node.hot_swap import ModelSlots, SwapEvent
from detector_node.inspection import BrandRule, InspectionConfig, Inspector, SimulatedCamera
from detector_node.mcu_sim import McuSimConfig, McuSimulator
from detector_node.model_store import ModelEntry, ModelStore, sha256_file
from detector_node.runtime import InferenceError, load_runner
from detector_node.serial_link import SerialConfig, SerialLink
from tiny_models import CLASSES, make_bundle


@dataclass
class Station:
    tmp: Path
    store: ModelStore
    slots: ModelSlots
    events: list[SwapEvent]
    inspector: Inspector
    link: SerialLink
    history: History

    def deliver(self, tag: float, **kw) -> ModelEntry:  # noqa: ANN003
        src = make_bundle(self.tmp / f"src-{tag}.zip", tag=tag, **kw)
        sha = sha256_file(src)
        dest = self.store.hold("brandA", self.store.model_path("brandA", sha, int(tag)))
        src.rename(dest)
        entry = ModelEntry(dest.name, f"m{tag}", int(tag), sha)
        self.slots.deploy("brandA", dest, entry)
        return entry


def load(brand: str, path: Path, entry: ModelEntry):  # noqa: ANN201
    return load_runner(brand, path, entry, image_size=64, classes=CLASSES, ok_class="good")


@pytest.fixture
def make_station(tmp_path: Path) -> Iterator:
    opened: list = []

    def make(sim: McuSimulator, loader=load, **inspection) -> Station:  # noqa: ANN001, ANN003
        store = ModelStore(tmp_path / "params", ["brandA"])
        events: list[SwapEvent] = []
        slots = ModelSlots(store, loader, probation=5, on_event=events.append).start()
        history = History(HistoryConfig(root=tmp_path / "history"))
        link_box: list[SerialLink] = []
        config = InspectionConfig(**{"deadline_s": 0.25, **inspection})
        inspector = Inspector(config, SimulatedCamera(64), slots, {"brandA": BrandRule("good")},
                              lambda frame: link_box[0].send(frame), history)
        link = SerialLink.open(SerialConfig(port=sim.device_path), inspector.on_frame, name="pc")
        link_box.append(link)
        inspector.start()
        link.start()
        station = Station(tmp_path, store, slots, events, inspector, link, history)
        opened.append(station)
        return station

    yield make
    for s in opened:
        s.inspector.close()
        s.link.close()
        s.slots.close()
        s.history.close()


def mcu(rate: float, count: int, brands: list[str] | None = None) -> McuSimulator:
    return McuSimulator(McuSimConfig(rate_hz=rate, brands=brands or ["brandA"], deadline_s=0.3, max_triggers=count,
                                     heartbeat_s=0.2))


def test_every_trigger_answered_and_stored_with_verdict_and_label(make_station, wait_for) -> None:  # noqa: ANN001
    with mcu(100, 60) as sim:
        station = make_station(sim)
        station.deliver(1)
        assert station.slots.drain()
        sim.start()
        wait_for(lambda: sim.stats(False).sent == 60 and sim.stats(False).pending == 0, timeout=10)
        stats = sim.stats()
        assert (stats.answered, stats.missed, stats.ok + stats.ng) == (60, 0, 60)
        assert stats.light_on is True and stats.pc_heartbeats >= 1
        assert station.inspector.wait_idle()
        s = station.inspector.stats()
        assert (s["inspected"], s["missed"], s["stored"], s["ng"]) == (60, 0, 60, stats.ng)
        assert s["latency_ms_p50"] < s["latency_ms_p99"] < 50
        samples, _ = station.history.list(limit=100)
        assert len(samples) == 60 and {x.verdict for x in samples} <= {"OK", "NG"}
        assert {x.label for x in samples} <= set(CLASSES)


def test_hot_reload_during_continuous_triggering_misses_nothing(make_station, wait_for) -> None:  # noqa: ANN001
    def slow_load(brand: str, path: Path, entry: ModelEntry):  # noqa: ANN202
        time.sleep(0.6 if entry.model != "m1" else 0)  # a big model: loading takes longer than the deadline
        return load(brand, path, entry)

    with mcu(100, 200) as sim:
        station = make_station(sim, slow_load)
        station.deliver(1)
        assert station.slots.drain()
        sim.start()
        wait_for(lambda: sim.stats(False).sent >= 30, timeout=10)
        station.deliver(2)
        wait_for(lambda: station.slots.get("brandA").entry.model == "m2", timeout=10)
        station.deliver(3)
        wait_for(lambda: sim.stats(False).sent == 200 and sim.stats(False).pending == 0, timeout=10)
        assert station.slots.drain()
        stats = sim.stats()
        assert (stats.answered, stats.missed, stats.late) == (200, 0, 0)
        assert station.inspector.stats()["missed"] == 0
        assert [e.state.value for e in station.events].count("ACTIVE") == 3
        assert station.slots.get("brandA").entry.model == "m3"
        assert [e.model for e in station.store.entries("brandA")] == ["m3", "m2"]


def test_no_model_unknown_brand_and_serial_garbage(make_station, wait_for) -> None:  # noqa: ANN001
    with mcu(0, 0) as sim:
        station = make_station(sim)
        sim.start()
        sim.trigger("brandA")  # no model yet: the brand's default verdict
        sim.trigger("brandZ")  # not configured here: the station's default verdict
        sim.link.write_raw(b"$TRIG 7 brandA*00\r\n")  # bad checksum
        sim.link.write_raw(b"\xff\xfe garbage \x00\r\n")
        sim.link.write_raw(b"x" * 300 + b"\r\n")
        wait_for(lambda: sim.stats(False).answered == 2 and station.link.garbage_total == 3)
        assert dict(station.link.garbage) == {"bad_checksum": 1, "not_ascii": 1, "too_long": 1}
        assert (sim.stats().ng, sim.stats().missed) == (2, 0)
        s = station.inspector.stats()
        assert (s["no_model"], s["unknown_brand"], s["inspected"]) == (1, 1, 1)
        station.deliver(1)
        assert station.slots.drain()
        sim.trigger("brandA")  # the station kept going
        wait_for(lambda: sim.stats(False).answered == 3)
        assert station.inspector.stats()["no_model"] == 1


class SlowCamera(SimulatedCamera):
    def capture(self, brand: str, seq: int):  # noqa: ANN201
        time.sleep(0.05)
        return super().capture(brand, seq)


def test_stale_triggers_are_counted_missed_never_dropped_silently(make_station, wait_for) -> None:  # noqa: ANN001
    with mcu(0, 0) as sim:
        station = make_station(sim, deadline_s=0.02)
        station.deliver(1)
        assert station.slots.drain()
        station.inspector.camera = SlowCamera(64)
        sim.start()
        for _ in range(5):
            sim.trigger("brandA")
        wait_for(lambda: sim.stats(False).pending == 0, timeout=5)
        s = station.inspector.stats()
        assert (s["triggers"], s["missed"], s["late"], s["inspected"]) == (5, 5, 1, 1)
        assert sim.stats().missed == 4  # the simulator's deadline is longer: it saw one answer in time


class FailsAfterProbe:
    """A model that passes the load check, then produces NaN on the line's images."""

    def __init__(self, runner) -> None:  # noqa: ANN001
        self.brand, self.entry, self._runner = runner.brand, runner.entry, runner

    def infer(self, image):  # noqa: ANN001, ANN201
        raise InferenceError("output is not finite: [nan nan nan nan nan]")


def test_model_failing_on_probation_is_rolled_back_without_a_missed_trigger(make_station, wait_for) -> None:
    def loader(brand: str, path: Path, entry: ModelEntry):  # noqa: ANN202
        runner = load(brand, path, entry)  # the real load and probe pass
        return FailsAfterProbe(runner) if entry.model == "m2" else runner

    with mcu(100, 60) as sim:
        station = make_station(sim, loader)
        station.deliver(1)
        assert station.slots.drain()
        sim.start()
        wait_for(lambda: sim.stats(False).sent >= 20)
        station.deliver(2)
        wait_for(lambda: sim.stats(False).sent == 60 and sim.stats(False).pending == 0, timeout=10)
        assert station.slots.drain()
        assert (sim.stats().answered, sim.stats().missed) == (60, 0)
        rolled = station.events[-1]
        assert (rolled.state.value, rolled.entry.model, rolled.previous.model) == ("ROLLED_BACK", "m2", "m1")
        assert "failed on probation: InferenceError: output is not finite" in rolled.reason
        assert station.slots.get("brandA").entry.model == "m1"
        assert [e.model for e in station.store.entries("brandA")] == ["m1"]
        s = station.inspector.stats()
        assert (s["rolled_back"], s["errors"], s["missed"]) == (1, 0, 0)
