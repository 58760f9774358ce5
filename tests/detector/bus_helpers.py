"""Helpers of the detector's bus tests: a detector config for a test broker, an edge that delivers models."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from fabbus.client import BusClient, MqttConfig, ReceivedMessage
from fabbus.messages import DeliveryStatus, ModelChunk
from fabbus.transfer import Sender, bus_publisher, make_manifest
from detector_node.config import BrandConfig, DetectorConfig, HistoryServerSection, NodeIds
from detector_node.delivery import DeliveryConfig
from detector_node.history import HistoryConfig
from detector_node.serial_link import SerialConfig
from helpers import DET_L1_D1, EDGE_L1
from tiny_models import CLASSES

BRANDS = {"brandA": CLASSES, "brandB": ["good", "scratch", "spot"]}


def mqtt(broker: Any, username: str | None, password: str, **kw: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username=username, password=password,
                      reconnect_min_delay=0.1, reconnect_max_delay=1.0, connect_timeout=10.0, **kw)


def detector_config(tmp: Path, broker: Any, port: str, **over: Any) -> DetectorConfig:
    base = dict(
        ids=NodeIds(site="s1", line="l1", det="d1"),
        mqtt=mqtt(broker, None, broker.users[DET_L1_D1]),
        serial=SerialConfig(port=port),
        brands={name: BrandConfig(classes=classes) for name, classes in BRANDS.items()},
        params_dir=tmp / "params",
        history=HistoryConfig(root=tmp / "history"),
        history_server=HistoryServerSection(enabled=False),
        delivery=DeliveryConfig(quiet_s=0.3, progress_interval_s=0.05),
        status_interval_s=0.5,
        error_interval_s=0,
    )
    return DetectorConfig(**{**base, **over})


class Inbox:
    """Records what a handler receives; ``wait(predicate)`` for a condition over everything so far."""

    def __init__(self) -> None:
        self.items: list[ReceivedMessage] = []
        self._cond = threading.Condition()

    def __call__(self, msg: ReceivedMessage) -> None:
        with self._cond:
            self.items.append(msg)
            self._cond.notify_all()

    def bodies(self) -> list[Any]:
        with self._cond:
            return [m.body for m in self.items]

    def wait(self, predicate: Any, timeout: float = 15.0, what: str = "", since: float = 0.0) -> Any:
        """Wait until ``predicate(bodies)`` is truthy (bodies of messages sent at or after ``since``)."""
        end = time.monotonic() + timeout
        with self._cond:
            while not (found := predicate([m.body for m in self.items if m.message.ts >= since])):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or predicate}; got {self.items[-8:]}")
                self._cond.wait(left)
        return found


def last_state(model: str, *states: str):  # noqa: ANN201
    """Predicate: the newest DeliveryStatus of ``model`` is in ``states`` (returns it)."""
    def check(bodies: list[Any]) -> DeliveryStatus | None:
        mine = [b for b in bodies if isinstance(b, DeliveryStatus) and b.model == model]
        return mine[-1] if mine and mine[-1].state.value in states else None
    return check


class Edge:
    """The line's edge as the detector sees it: delivers models, listens to statuses and errors."""

    def __init__(self, broker: Any) -> None:
        self.client = BusClient(mqtt(broker, None, broker.users[EDGE_L1]), "edge", {"site": "s1", "line": "l1"})
        self.statuses, self.errors, self.detector = Inbox(), Inbox(), Inbox()
        self.client.subscribe("delivery_status", self.statuses, det="d1")
        self.client.subscribe("detector_error", self.errors, det="d1")
        self.client.subscribe("detector_status", self.detector, det="d1")
        self.client.subscribe("detector_state", self.detector, det="d1")
        self.client.connect()
        self._senders: list[Sender] = []
        self._threads: list[threading.Thread] = []

    def deliver(self, path: Path, model: str, brand: str = "brandA", *, version: int = 1, chunk_size: int = 2048,
                sender_cls: type[Sender] = Sender, wait: bool = True) -> Sender:
        """Send a file with the chunked protocol and keep answering re-requests in a thread."""
        manifest = make_manifest(path, model=model, brand=brand, chunk_size=chunk_size, version=version)
        publish = bus_publisher(self.client, "delivery_manifest", "delivery_chunk", det="d1", brand=brand,
                                correlation_id=f"task-{model}")
        sender = sender_cls(path, manifest, publish)
        self.client.subscribe("delivery_request", sender.on_request, det="d1", brand=brand).wait()
        self._senders.append(sender)
        thread = threading.Thread(target=lambda: (sender.send(), sender.serve(60)), daemon=True)
        thread.start()
        self._threads.append(thread)
        return sender

    def close(self) -> None:
        for sender in self._senders:
            sender.close()
        for thread in self._threads:
            thread.join(10)
        self.client.close()


class CorruptingSender(Sender):
    """Spoils chunk 1 the first time it is sent (bytes flipped, announced sha256 of the good bytes)."""

    spoiled = 0

    def make_chunk(self, fd: int, index: int) -> ModelChunk:
        chunk = super().make_chunk(fd, index)
        if index == 1 and not self.spoiled:
            self.spoiled += 1
            bad = bytes(b ^ 0xFF for b in chunk.data[:16]) + chunk.data[16:]
            return ModelChunk(model=chunk.model, index=index, sha256=chunk.sha256, data=bad)
        return chunk
