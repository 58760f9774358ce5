"""Model delivery over a real broker to a running detector node (in-process), MCU simulator on a pty.

The edge side is fabbus.transfer.Sender on an edge BusClient; the detector is
detector_node.node.DetectorNode. Tests assert what the edge sees on the bus
(DeliveryStatus, ErrorReport, DetectorStatus) and what the MCU sees on the serial line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabbus.messages import DetectorStatus, ErrorReport, RollbackCommand
from detector_node.mcu_sim import McuSimConfig, McuSimulator
from detector_node.model_store import sha256_file
from detector_node.node import DetectorNode
from bus_helpers import CorruptingSender, Edge, detector_config, last_state
from tiny_models import make_bundle, tflite_cnn


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[Any]:
    """``plant(broker)`` -> (node, edge, sim): a started detector, an edge client and the MCU simulator."""
    opened: list = []

    def start(broker: Any, **over: Any) -> tuple[DetectorNode, Edge, McuSimulator]:
        sim = McuSimulator(McuSimConfig(rate_hz=0, brands=["brandA"], deadline_s=0.5, heartbeat_s=0.5))
        opened.append(sim)
        node = DetectorNode(detector_config(tmp_path, broker, sim.device_path, **over))
        opened.append(node)
        node.start()
        sim.start()
        edge = Edge(broker)
        opened.append(edge)
        return node, edge, sim

    yield start
    for thing in reversed(opened):
        thing.close()


def inspect(sim: McuSimulator, n: int, wait_for: Any) -> None:
    """Trigger ``n`` products and wait until all are answered in time."""
    before = sim.stats(False).answered
    for _ in range(n):
        sim.trigger("brandA")
    wait_for(lambda: sim.stats(False).answered == before + n, timeout=5)


def errors(edge: Edge, code: str) -> list[ErrorReport]:
    return [b for b in edge.errors.bodies() if b.code == code]


def test_delivery_with_a_corrupt_chunk_recovers_to_active(broker, plant, tmp_path, wait_for) -> None:  # noqa: ANN001
    node, edge, sim = plant(broker)
    bundle = make_bundle(tmp_path / "m1.zip")
    edge.deliver(bundle, "m1", version=1, sender_cls=CorruptingSender)
    active = edge.statuses.wait(last_state("m1", "ACTIVE", "FAILED"), what="m1 ACTIVE")
    assert active.state.value == "ACTIVE" and active.sha256 == sha256_file(bundle) and active.version == 1
    states = [b.state.value for b in edge.statuses.bodies() if b.model == "m1"]
    assert states[0] == "DOWNLOADING" and states[-3:] == ["VERIFYING", "LOADING", "ACTIVE"]
    assert edge.statuses.items[-1].message.correlation_id == "task-m1"
    bad_chunk = edge.errors.wait(lambda bodies: [b for b in bodies if b.code == "bad_chunk"], what="bad_chunk")
    assert "chunk 1 is corrupt" in bad_chunk[0].message
    stored = node.store.path_of("brandA", node.store.active("brandA"))
    assert stored.parent == tmp_path / "params" / "brandA" / "models" and sha256_file(stored) == active.sha256
    inspect(sim, 10, wait_for)
    assert node.inspector.stats()["no_model"] == 0 and node.inspector.stats()["inspected"] == 10
    status = edge.detector.wait(lambda bodies: [b for b in bodies if isinstance(b, DetectorStatus)
                                                and b.inspected == 10 and "brandA" in b.active_models])
    assert status[-1].active_models["brandA"].sha256 == active.sha256
    assert status[-1].latency_ms_p50 is not None and status[-1].missed == 0


def test_bad_deliveries_are_refused_and_the_station_keeps_inspecting(embedded_broker, plant, tmp_path,
                                                                     wait_for) -> None:  # noqa: ANN001
    node, edge, sim = plant(embedded_broker)
    good = make_bundle(tmp_path / "good.zip", tag=1)
    edge.deliver(good, "good", version=1)
    edge.statuses.wait(last_state("good", "ACTIVE"), what="good ACTIVE")
    inspect(sim, 5, wait_for)

    cases = {  # model id -> (file, brand, expected reason)
        "for-brandZ": (good, "brandZ", "unknown brand 'brandZ'"),
        "not-a-model": (tmp_path / "notes.txt", "brandA", "not a valid model bundle"),
        "small-input": (make_bundle(tmp_path / "small.zip", tflite_cnn((32, 32, 3)), tag=2), "brandA",
                        "wrong input shape: model.tflite takes [1, 32, 32, 3]"),
    }
    (tmp_path / "notes.txt").write_bytes(b"shift notes, definitely not a model\n" * 100)
    for model, (path, brand, reason) in cases.items():
        edge.deliver(path, model, brand, version=2)
        failed = edge.statuses.wait(last_state(model, "FAILED", "ACTIVE"), what=f"{model} FAILED")
        assert failed.state.value == "FAILED" and reason in failed.reason, failed
        inspect(sim, 5, wait_for)  # between refusals the station goes on inspecting
    assert node.slots.get("brandA").entry.model == "good"
    assert sorted(p.name for p in (tmp_path / "params" / "brandA" / "models").iterdir()) == [
        node.store.active("brandA").file]
    assert errors(edge, "unknown_brand") and len(errors(edge, "model_refused")) == 2
    assert sim.stats().missed == 0 and node.inspector.stats()["errors"] == 0

    # the rollback command: back to the previous model, and refused when there is none
    edge.deliver(make_bundle(tmp_path / "v2.zip", tag=3), "v2", version=2)
    edge.statuses.wait(last_state("v2", "ACTIVE"), what="v2 ACTIVE")
    edge.client.publish("model_rollback", RollbackCommand(brand="brandA", reason="accuracy dropped"), det="d1",
                        brand="brandA").wait()
    rolled = edge.statuses.wait(last_state("v2", "ROLLED_BACK"), what="v2 ROLLED_BACK")
    assert rolled.previous == "good" and "accuracy dropped" in rolled.reason
    assert node.slots.get("brandA").entry.model == "good"
    edge.client.publish("model_rollback", RollbackCommand(brand="brandA"), det="d1", brand="brandA").wait()
    refused = edge.errors.wait(lambda bodies: [b for b in bodies if b.code == "rollback_refused"], what="refusal")
    assert "no previous model" in refused[0].message
    assert edge.statuses.bodies()[-1].state.value == "ROLLED_BACK"  # the delivery status is left as it was
    inspect(sim, 5, wait_for)


def test_serial_garbage_is_reported_on_the_bus(embedded_broker, plant, wait_for) -> None:  # noqa: ANN001
    node, edge, sim = plant(embedded_broker)
    sim.link.write_raw(b"$RES 1 MAYBE*00\r\n")
    found = edge.errors.wait(lambda bodies: [b for b in bodies if b.code == "serial_garbage"], what="garbage")
    assert "bad_checksum" in found[0].message and found[0].detail["reason"] == "bad_checksum"
    sim.trigger("brandA")
    wait_for(lambda: sim.stats(False).answered == 1)
    assert sim.stats().ng == 1 and node.inspector.stats()["no_model"] == 1  # no model yet: default verdict NG
