"""Shared parts of the edge node tests (no tests here): a line's detectors, a test cloud, configs, bundles.

    with Plant(tmp_path, broker) as plant:                 # real DetectorNodes, simulator histories over HTTP
        plant.add("d1", per_class=10)
        with Cloud(broker, tmp_path) as cloud, EdgeNode(edge_config(tmp_path, broker, plant.urls)) as edge:
            cloud.send(TrainCommand(...))
            cloud.wait_state("t1", "SUCCEEDED")

The cloud is a real BusClient (role cloud): it sends commands, records statuses,
progress, metrics and errors, receives uploads with fabbus' Receiver and answers a
TransferResult, and serves fetches of the models it holds with fabbus' Sender.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import CLOUD, EDGE_L1
from PIL import Image

from detector_node.camera_sim import CameraSimulator
from detector_node.config import (
    BrandConfig,
    DetectorConfig,
    HistoryServerSection,
    NodeIds,
)
from detector_node.delivery import DeliveryConfig
from detector_node.history import History, HistoryConfig, encode_png
from detector_node.mcu_sim import McuSimConfig, McuSimulator
from detector_node.node import DetectorNode
from detector_node.serial_link import SerialConfig
from edge_node.config import (
    BrandSection,
    CollectionConfig,
    DetectorLink,
    EdgeConfig,
    EdgeIds,
    TransferSection,
)
from fabbus.acl import username_for
from fabbus.assembler import Receiver, TransferStatus
from fabbus.client import BusClient, MqttConfig, ReceivedMessage
from fabbus.messages import Body, TaskStatus, TransferResult
from fabbus.model_bundle import BundleMeta, write_bundle
from fabbus.training_config import TrainingConfig
from fabbus.transfer import Sender, bus_publisher, make_manifest

TOKEN = "edge-history-token-0123456789abcdef"
TOKENS_ENV = "TEST_NODE_EDGE_TOKENS"
BRAND = "brandB"
CLASSES = ["good", "scratch", "spot"]
SIZE = 32                    # detector frames, history images and model input
CHUNK = 16 * 1024


def mqtt(broker: Any, username: str, **kw: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username=username, password=broker.users[username],
                      reconnect_min_delay=0.1, reconnect_max_delay=1.0, connect_timeout=10.0, **kw)


def training_config(**over: Any) -> TrainingConfig:
    base: dict[str, Any] = {"classes": CLASSES, "input_size": SIZE, "epochs": 2, "learning_rate": 0.003,
                            "generators": {"batch_size": 8, "validation_split": 0.2, "test_split": 0.2}}
    base.update(over)
    return TrainingConfig.model_validate(base)


def fill_history(root: Path, per_class: int, *, classes: list[str] = CLASSES, brand: str = BRAND, seed: int = 0,
                 first: int = 0) -> int:
    """Add simulator images to a detector's history; returns their PNG bytes."""
    cam = CameraSimulator(brand, size=SIZE, seed=seed)
    total = 0
    with History(HistoryConfig(root=root)) as history:
        for k, label in enumerate(classes):
            for i in range(first, first + per_class):
                image = cam.render(1000 * k + i, label)
                total += len(encode_png(image))
                history.add(Image.fromarray(image), brand, label, "OK" if label == "good" else "NG")
    return total


class Inbox:
    """Records what a handler receives; ``wait(predicate)`` until it holds over the bodies so far."""

    def __init__(self) -> None:
        self.items: list[ReceivedMessage] = []
        self._cond = threading.Condition()

    def __call__(self, msg: ReceivedMessage) -> None:
        with self._cond:
            self.items.append(msg)
            self._cond.notify_all()

    def bodies(self, task: str | None = None) -> list[Any]:
        with self._cond:
            return [m.body for m in self.items if task is None or getattr(m.body, "task", None) == task]

    def wait(self, predicate: Callable[[list[Any]], Any], timeout: float = 30.0, what: str = "") -> Any:
        end = time.monotonic() + timeout
        with self._cond:
            while not (found := predicate([m.body for m in self.items])):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what or predicate}; last: {self.items[-5:]}")
                self._cond.wait(left)
        return found


class Plant:
    """The line's detectors (DetectorNode in-process, MCU simulator on a pty), histories served on free ports."""

    def __init__(self, tmp: Path, broker: Any, monkeypatch: Any) -> None:
        self.tmp, self.broker = tmp, broker
        monkeypatch.setenv(TOKENS_ENV, TOKEN)
        self.nodes: dict[str, DetectorNode] = {}
        self.raw_bytes: dict[str, int] = {}
        self._opened: list[Any] = []

    def add(self, det: str, per_class: int = 0, **fill: Any) -> DetectorNode:
        root = self.tmp / f"det-{det}"
        self.raw_bytes[det] = fill_history(root / "history", per_class, **fill) if per_class else 0
        sim = McuSimulator(McuSimConfig(rate_hz=0, brands=[BRAND], deadline_s=0.5, heartbeat_s=0.5))
        self._opened.append(sim)
        cfg = DetectorConfig(
            ids=NodeIds(site="s1", line="l1", det=det),
            mqtt=mqtt(self.broker, username_for("detector", site="s1", line="l1", det=det)),
            serial=SerialConfig(port=sim.device_path), image_size=SIZE,
            brands={BRAND: BrandConfig(classes=CLASSES)}, params_dir=root / "params",
            history=HistoryConfig(root=root / "history"),
            history_server=HistoryServerSection(enabled=True, port=0, tokens_env=TOKENS_ENV),
            delivery=DeliveryConfig(quiet_s=0.5, progress_interval_s=0.05), status_interval_s=1.0,
            error_interval_s=0)
        node = DetectorNode(cfg)
        self._opened.append(node)
        self.nodes[det] = node.start()
        sim.start()
        return node

    @property
    def urls(self) -> dict[str, str]:
        return {det: node.http.url for det, node in self.nodes.items() if node.http is not None}

    def close(self) -> None:
        for thing in reversed(self._opened):
            thing.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def edge_config(tmp: Path, broker: Any, urls: dict[str, str], *, transfer: dict[str, Any] | None = None,
                **over: Any) -> EdgeConfig:
    """The test line's edge; ``transfer`` overrides some transfer settings, the rest override fields."""
    base: dict[str, Any] = {
        "ids": EdgeIds(site="s1", line="l1"), "mqtt": mqtt(broker, EDGE_L1),
        "detectors": {det: DetectorLink(url=url, token=TOKEN) for det, url in urls.items()},
        "brands": {BRAND: BrandSection(classes=CLASSES), "brandA": BrandSection(classes=[*CLASSES, "crack", "dent"])},
        "workdir": tmp / "edge", "progress_interval_s": 0.1,
        "collection": CollectionConfig(timeout_s=5, retries=1),
        "transfer": TransferSection(chunk_size=CHUNK, upload_timeout_s=60, fetch_timeout_s=20, delivery_timeout_s=30,
                                    quiet_s=0.5, max_retries=3).model_copy(update=transfer or {})}
    base.update(over)
    return EdgeConfig(**base)


class Cloud:
    """The cloud as the edge sees it (a BusClient of role cloud)."""

    def __init__(self, broker: Any, tmp: Path, *, answer: str = "accept") -> None:
        self.tmp, self.answer = tmp / "cloud", answer  # answer: accept | reject | silent
        self.client = BusClient(mqtt(broker, CLOUD), "cloud", {"node": "test-cloud"})
        self.status, self.progress, self.metrics, self.errors = Inbox(), Inbox(), Inbox(), Inbox()
        self.edge_state = Inbox()
        self.uploaded: dict[str, Path] = {}          # model id -> received file
        self.models: dict[str, tuple[Path, str]] = {}  # what a fetch can get: model id -> (file, brand)
        self._receivers: dict[str, Receiver] = {}
        self._senders: list[tuple[Sender, threading.Thread]] = []
        self._lock = threading.Lock()
        c = self.client
        c.subscribe("task_status", self.status)
        c.subscribe("task_progress", self.progress)
        c.subscribe("task_metrics", self.metrics)
        c.subscribe("edge_error", self.errors)
        c.subscribe("edge_state", self.edge_state)
        c.subscribe("model_upload_manifest", self.on_model_upload_manifest)
        c.subscribe("model_upload_chunk", self.on_model_upload_chunk)
        c.subscribe("model_fetch_request", self.on_model_fetch_request)
        c.connect()

    def send(self, body: Body) -> None:
        self.client.publish("edge_command", body, site="s1", line="l1", correlation_id=body.task).wait(5)

    def states(self, task: str) -> list[str]:
        return [b.state.value for b in self.status.bodies(task) if isinstance(b, TaskStatus)]

    def wait_state(self, task: str, *states: str, timeout: float = 60.0) -> TaskStatus:
        def last(bodies: list[Any]) -> TaskStatus | None:
            mine = [b for b in bodies if isinstance(b, TaskStatus) and b.task == task]
            return mine[-1] if mine and mine[-1].state.value in states else None
        return self.status.wait(last, timeout, f"task {task} in {states}")

    # ---- uploads in

    def on_model_upload_manifest(self, msg: ReceivedMessage) -> None:
        model = msg.ids["model"]
        with self._lock:
            rx = self._receivers.get(model)
            if rx is None:
                rx = self._receivers[model] = Receiver(
                    lambda m: self.tmp / f"{m.sha256}.zip", quiet_s=0.5,
                    request=lambda req: self.client.publish("model_upload_request", req, site="s1", line="l1",
                                                            model=model),
                    on_status=lambda s: self._uploaded(model, s))
        rx.on_manifest(msg)

    def on_model_upload_chunk(self, msg: ReceivedMessage) -> None:
        with self._lock:
            rx = self._receivers.get(msg.ids["model"])
        if rx is not None:
            rx.on_chunk(msg)

    def _uploaded(self, model: str, status: TransferStatus) -> None:
        if status.state != "COMPLETE" or status.path is None or self.answer == "silent":
            return
        self.uploaded[model] = status.path
        if self.answer == "accept":
            result = TransferResult(model=model, state="ACCEPTED", reason="registered as v1", version=1)
        else:
            result = TransferResult(model=model, state="REJECTED", reason="evaluation gate: accuracy 0.31 < 0.9")
        self.client.publish("model_upload_result", result, site="s1", line="l1", model=model)

    # ---- fetches out

    def on_model_fetch_request(self, msg: ReceivedMessage) -> None:
        model = msg.ids["model"]
        with self._lock:
            running = [s for s, _ in self._senders if s.manifest.model == model and not s.closed]
        if running:
            running[0].on_request(msg)
            return
        if model not in self.models:
            refused = TransferResult(model=model, state="REJECTED", reason=f"unknown model {model!r}: not in the registry")
            self.client.publish("model_fetch_manifest", refused, site="s1", line="l1", model=model)
            return
        path, brand = self.models[model]
        sender = Sender(path, make_manifest(path, model=model, brand=brand, chunk_size=CHUNK, version=1),
                        bus_publisher(self.client, "model_fetch_manifest", "model_fetch_chunk", site="s1", line="l1",
                                      model=model))
        sender.on_request(msg)
        thread = threading.Thread(target=sender.serve, args=(30,), daemon=True)
        with self._lock:
            self._senders.append((sender, thread))
        thread.start()

    def close(self) -> None:
        for sender, thread in self._senders:
            sender.close()
            thread.join(10)
        for rx in self._receivers.values():
            rx.close()
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@functools.cache
def _tiny_tflite(classes: int, seed: int) -> bytes:
    import keras

    from edge_node.export import to_tflite

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(classes, activation="softmax")])
    return to_tflite(model)


def make_bundle(path: Path, *, brand: str = BRAND, classes: list[str] | None = None, tag: float = 1.0) -> Path:
    """A small loadable bundle for the line's detectors (random weights); ``tag`` changes its sha256."""
    classes = classes or CLASSES
    meta = BundleMeta(classes=classes, input_shape=(SIZE, SIZE, 3), color_mode="rgb", normalization="rescale",
                      architecture="tiny-cnn", brand=brand, created_at=tag)
    return write_bundle(path, _tiny_tflite(len(classes), 0), meta)
