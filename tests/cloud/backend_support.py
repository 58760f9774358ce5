"""Support of the back-end tests: real stores (SQLite or PostgreSQL, SqliteHuey or RedisHuey),
a cloud config for a test broker, a running back end, a simulated edge and tiny real model bundles.

    stack = Stack.create("postgres", tmp_path)          # a fresh database and queue; stack.drop() at the end
    cfg = cloud_config(tmp_path, broker, stack)
    with running_cloud(cfg) as cloud:                     # Backend + huey consumer threads + Listener
        with SimEdge(broker) as edge: ...                 # a real BusClient with role edge, answering commands
"""

from __future__ import annotations

import contextlib
import logging
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from cloud_app import queries
from cloud_app.backend import Backend
from cloud_app.config import (BrandSpec, CloudConfig, DispatchConfig, FleetConfig, GateConfig, HueyConfig, LineSpec,
                              SiteSpec, TransferSettings)
from cloud_app.listener import Listener
from cloud_app.models import Task
from fabbus.client import BusClient, MqttConfig, ReceivedMessage
from fabbus.messages import ModelManifest, TaskStatus, TransferResult
from fabbus.model_bundle import BundleMeta, write_bundle
from fabbus.transfer import Sender, bus_publisher, make_manifest
from helpers import CLOUD, EDGE_L1, EDGE_L2

PG_ADMIN = os.environ.get("FAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FAB_TEST_REDIS", "redis://127.0.0.1:6379/0")
CLASSES_A = ["good", "scratch", "spot"]
FLEET = FleetConfig(
    sites={"s1": SiteSpec(lines={"l1": LineSpec(detectors=["d1", "d2"]), "l2": LineSpec(detectors=["d1"])})},
    brands={"brandA": BrandSpec(classes=CLASSES_A), "brandB": BrandSpec(classes=["ok", "ng"])})
TRAIN_CONFIG = {"classes": CLASSES_A, "epochs": 2, "input_size": 32}


@dataclass
class Stack:
    """A fresh database (SQLite file or PostgreSQL database) and a huey queue (SQLite file or Redis name)."""

    kind: str
    database_url: str
    huey: HueyConfig
    pg_name: str | None = None

    @classmethod
    def create(cls, kind: str, tmp: Path) -> Stack:
        name = f"fabtest_{uuid.uuid4().hex[:12]}"
        if kind == "sqlite":
            return cls(kind, f"sqlite:///{tmp / 'cloud.db'}", HueyConfig(name=name, sqlite_path=tmp / "huey.db"))
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
        return cls(kind, url, HueyConfig(name=name, url=REDIS_URL), pg_name=name)

    def drop(self) -> None:
        if self.huey.url:
            r = redis.Redis.from_url(self.huey.url)
            try:
                for key in r.scan_iter(f"huey.*{self.huey.name}*"):
                    r.delete(key)
            finally:
                r.close()
        if self.pg_name:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')


def mqtt_for(broker: Any, username: str | None, **kw: Any) -> MqttConfig:
    return MqttConfig(host=broker.host, port=broker.port, username=username, password=broker.users[username or ""]
                      if username else None, reconnect_min_delay=0.1, reconnect_max_delay=1.0, connect_timeout=10.0,
                      **kw)


def cloud_config(tmp: Path, broker: Any, stack: Stack, **over: Any) -> CloudConfig:
    base: dict[str, Any] = dict(
        node=f"c{uuid.uuid4().hex[:8]}", database_url=stack.database_url, huey=stack.huey,
        mqtt=mqtt_for(broker, CLOUD), model_store=tmp / "models", fleet=FLEET,
        dispatch=DispatchConfig(ack_timeout_s=1.0, ack_retries=1, silence_timeout_s=30, follow_interval_s=1,
                                redispatch_after_s=3, poll_interval_s=0.05),
        transfer=TransferSettings(quiet_s=0.3, max_retries=2, chunk_size=4096, serve_s=20),
        gate=GateConfig(max_accuracy_drop=0.02, min_recall=0.5, max_latency_ms=50, latency_runs=5))
    return CloudConfig(**{**base, **over})


@dataclass
class Cloud:
    backend: Backend
    listener: Listener
    consumer: Any

    @property
    def db(self) -> Any:
        return self.backend.db


@contextlib.contextmanager
def running_cloud(cfg: CloudConfig, *, consumer: bool = True) -> Iterator[Cloud]:
    """The back end of one cloud: migrated database, huey consumer threads, listener."""
    backend = Backend(cfg, role="worker")
    listener = Listener(backend)
    worker = None
    try:
        listener.start()
        if consumer:
            worker = backend.tasks.start_consumer(2, max_delay=0.1)
        yield Cloud(backend, listener, worker)
    finally:
        if worker is not None:
            worker.stop(graceful=True)
        listener.stop()
        backend.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.02)
    return value


Answer = Callable[["SimEdge", ReceivedMessage], None]


def accept(edge: SimEdge, rm: ReceivedMessage) -> None:
    kind = {"TrainCommand": "train", "DeployCommand": "deploy", "CancelCommand": "cancel"}[rm.message.type]
    if kind == "cancel":
        edge.status(rm.body.task, "CANCELED", "canceled on request", kind="train")  # type: ignore[attr-defined]
    else:
        edge.status(rm.body.task, "ACCEPTED", kind=kind)  # type: ignore[attr-defined]


class SimEdge:
    """A line's edge server as the cloud sees it: a real bus client that answers commands with ``answer``."""

    def __init__(self, broker: Any, line: str = "l1", answer: Answer | None = accept, **mqtt: Any) -> None:
        user = {"l1": EDGE_L1, "l2": EDGE_L2}[line]
        self.ids = {"site": "s1", "line": line}
        self.client = BusClient(mqtt_for(broker, user, **mqtt), "edge", self.ids)
        self.commands: list[ReceivedMessage] = []
        self.results: list[ReceivedMessage] = []
        self._lock = threading.Lock()
        self.answer = answer
        self.client.subscribe("edge_command", self._on_command)

    def _on_command(self, rm: ReceivedMessage) -> None:
        with self._lock:
            self.commands.append(rm)
        if self.answer is not None:
            self.answer(self, rm)

    def commands_of(self, task: str) -> list[ReceivedMessage]:
        with self._lock:
            return [c for c in self.commands if c.message.correlation_id == task]

    def status(self, task: str, state: str, reason: str = "", kind: str = "train", **details: Any) -> None:
        body = TaskStatus.model_validate({"task": task, "kind": kind, "state": state, "reason": reason,
                                          "details": details})
        self.client.publish("task_status", body, task=task, correlation_id=task).wait(5)

    def publish(self, topic: str, body: Any, **ids: str) -> None:
        delivery = self.client.publish(topic, body, correlation_id=getattr(body, "task", None), **ids)
        if self.client.contract.topic(topic).qos:
            delivery.wait(5)

    def sever(self) -> None:
        """Lose the connection without a DISCONNECT, as a crashed edge would: the broker sends its last will."""
        paho = self.client._mqtt  # noqa: SLF001 (the test needs the raw socket)
        paho.loop_stop()
        sock = paho.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> SimEdge:
        self.client.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close(timeout=0.5)


@functools.cache
def tiny_tflite(classes: int = 3, size: int = 32) -> bytes:
    """A real two-layer CNN converted to LiteRT (random weights), built once per session."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes, activation="softmax")])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def make_bundle(path: Path, *, brand: str = "brandA", classes: list[str] | None = None, tag: float = 1.0,
                tflite: bytes | None = None) -> Path:
    classes = classes or CLASSES_A
    meta = BundleMeta(classes=classes, input_shape=(32, 32, 3), color_mode="rgb", normalization="rescale",
                      architecture="tiny-cnn", brand=brand, created_at=tag)
    return write_bundle(path, tflite if tflite is not None else tiny_tflite(len(classes)), meta)


def metrics(accuracy: float, recall: dict[str, float] | None = None) -> dict[str, Any]:
    """Manifest metrics as the edge reports them (edge_node.evaluation.Evaluation.as_metrics)."""
    recall = recall or {c: accuracy for c in CLASSES_A}
    return {"test_accuracy": accuracy, "recall": recall, "precision": recall, "macro_f1": accuracy,
            "test_samples": 60}


# ---- fixtures and helpers shared by the test modules (import them by name)

ALL = [("embedded", "sqlite"), ("embedded", "postgres"), ("mosquitto", "sqlite"), ("mosquitto", "postgres")]
HALF = [("embedded", "postgres"), ("mosquitto", "sqlite")]


@dataclass
class Env:
    broker: Any
    stack: Stack
    config: CloudConfig


@pytest.fixture
def env(request: pytest.FixtureRequest, broker_factory: Any, tmp_path: Path) -> Iterator[Env]:
    kind, stack_kind = request.param
    broker = broker_factory(kind)
    stack = Stack.create(stack_kind, tmp_path)
    try:
        yield Env(broker, stack, cloud_config(tmp_path, broker, stack))
    finally:
        stack.drop()


@pytest.fixture(autouse=True)
def no_handler_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test in which a handler, a task or a transfer logged an exception."""
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert not errors, [r.getMessage() for r in errors]


def ids(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{a}-{b}" for a, b in pairs]


def task_of(cloud: Cloud, task_id: str) -> dict[str, Any]:
    with cloud.db.session(readonly=True) as s:
        return queries.task_detail(s, task_id)


def state_is(cloud: Cloud, task_id: str, state: str) -> bool:
    with cloud.db.session(readonly=True) as s:
        task = s.get(Task, task_id)
        return task is not None and task.state == state


class Uploader:
    """The edge's side of an upload: Sender on model_upload_*, results from model_upload_result."""

    def __init__(self, edge: SimEdge) -> None:
        self.edge = edge
        self.results: list[TransferResult] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._senders: list[Sender] = []
        edge.client.subscribe("model_upload_result", self._on_result).wait(5)

    def _on_result(self, rm: ReceivedMessage) -> None:
        with self._cond:
            self.results.append(rm.body)  # type: ignore[arg-type]
            self._cond.notify_all()

    def upload(self, path: Path, model: str, **fields: Any) -> TransferResult:
        manifest = make_manifest(path, model=model, brand="brandA", chunk_size=4096, **fields)
        return self.send(path, manifest)

    def send(self, path: Path, manifest: ModelManifest) -> TransferResult:
        sender = Sender(path, manifest, bus_publisher(self.edge.client, "model_upload_manifest", "model_upload_chunk",
                                                      model=manifest.model))
        self.edge.client.subscribe("model_upload_request", sender.on_request, model=manifest.model).wait(5)
        self._senders.append(sender)
        thread = threading.Thread(target=lambda: (sender.send(), sender.serve(30)), daemon=True)
        thread.start()
        self._threads.append(thread)
        with self._cond:
            assert self._cond.wait_for(lambda: any(r.model == manifest.model for r in self.results), 20), \
                "no upload result"
            return next(r for r in self.results if r.model == manifest.model)

    def close(self) -> None:
        for sender in self._senders:
            sender.close()
        for thread in self._threads:
            thread.join(10)
