"""Support of the fault-injection tests (tests/test_faults.py): a small factory, a bus tap, impostors, waiting.

    f = Factory(fault_options(tmp)).start()
    with BusTap.of(f) as tap, Impostor.of(f, EDGE_USER) as mitm:
        task = start_train(f.api, epochs=3)
        tap.wait(lambda: tap.training_progress(task["id"]), 60, "progress")
        with frozen(f, "detector-line1-cam1"): ...          # SIGSTOP, then SIGCONT
        done = wait_task(f.api, task["id"], 180)
        assert not record_problems(done, epochs=3)

Outcomes are observed through the factory's public interfaces only: the REST API
(``f.api``) and the bus as the cloud user (``BusTap`` records every topic under
``fab/v1/#``, which the cloud user's ACL allows). Faults are injected with the
factory's process controls (kill, stop, start, signals) and with raw MQTT clients
logged in as one of the factory's users (``Impostor``): what a compromised or buggy
node could send. Test-side only, to aim the faults: the processes' config files
(keep-alive, chunk size, error interval) and a registered model file from the
cloud's store (the bytes a forged chunk imitates).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from demo.cloud_api import ApiError, CloudApi
from demo.factory import Factory
from demo.options import FactoryOptions
from detector_node.config import DetectorConfig
from detector_node.config import load_config as load_detector_config
from edge_node.config import EdgeConfig
from edge_node.config import load_config as load_edge_config
from fabbus.errors import MessageError
from fabbus.examples import example_body
from fabbus.messages import (
    MAX_PAYLOAD_BYTES,
    MESSAGE_TYPES,
    Body,
    Message,
    decode,
    encode,
)
from fabbus.topics import Topic, contract

log = logging.getLogger(__name__)

T = TypeVar("T")

SITE, LINE, BRAND = "plant1", "line1", "brandB"
DETECTORS = ("cam1", "cam2")
LINE_KEY = f"{SITE}/{LINE}"
EDGE_USER = LINE_KEY
EDGE = f"edge-{LINE}"
CLOUD_USER = "cloud"
KEEPALIVE = 6                     # of edges and detectors: the broker drops a silent one after 1.5 x this
FINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT")
ACTIVE_STATES = ("QUEUED", "ACCEPTED", "IN_PROGRESS", "INTERRUPTED")
TAP_KEEP_BYTES = 1024 * 1024      # the tap keeps payloads up to this size (a flood's oversized ones: size only)


def det_user(det: str) -> str:
    return f"{SITE}/{LINE}/det/{det}"


def det_process(det: str) -> str:
    return f"detector-{LINE}-{det}"


def fault_options(workdir: Path, **kw: Any) -> FactoryOptions:
    """One line with two detectors on embedded defaults; a short keep-alive; a slow product rate (small data)."""
    base: dict[str, Any] = {"workdir": workdir, "lines": 1, "detectors_per_line": len(DETECTORS),
                            "pretrained": False, "keepalive": KEEPALIVE, "rate_hz": 8.0, "log_level": "INFO",
                            "ready_timeout_s": 180.0}
    return FactoryOptions(**{**base, **kw})


def edge_config(f: Factory, line: str = LINE) -> EdgeConfig:
    """The edge's own config file, as the factory wrote it (WORKDIR/config/edge-<line>.yaml)."""
    return load_edge_config(f.workdir / "config" / f"edge-{line}.yaml")


def detector_config(f: Factory, det: str, line: str = LINE) -> DetectorConfig:
    """A detector's own config file, as the factory wrote it (WORKDIR/config/detector-<line>-<det>.yaml)."""
    return load_detector_config(f.workdir / "config" / f"detector-{line}-{det}.yaml")


# ---- waiting ------------------------------------------------------------------------------------

def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def _api_get(api: CloudApi, path: str) -> Any:
    """GET that tolerates a transient connection error (the web process is never a fault target here)."""
    for attempt in range(3):
        try:
            return api.get(path)
        except ApiError as exc:
            if exc.status != 0 or attempt == 2:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def task_detail(api: CloudApi, task_id: str) -> dict[str, Any]:
    return _api_get(api, f"/tasks/{task_id}")


def wait_task(api: CloudApi, task_id: str, timeout: float, until: tuple[str, ...] = FINAL) -> dict[str, Any]:
    """The task's detail once its state is one of ``until``; AssertionError with its events otherwise."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        nonlocal last
        last = task_detail(api, task_id)
        return last if last["state"] in until else None
    try:
        return wait_until(reached, timeout, f"task {task_id} in {until}", interval=0.5)
    except AssertionError:
        raise AssertionError(f"task {task_id} still {last.get('state')} after {timeout:.0f} s (wanted {until}); "
                             f"events: {describe_events(last)}") from None


def describe_events(task: dict[str, Any]) -> str:
    return "; ".join(f"{e['state']}{' ' + e['reason'] if e.get('reason') else ''}" for e in task.get("events", []))


# ---- tasks through the REST API -------------------------------------------------------------------

def classes(api: CloudApi, brand: str = BRAND) -> list[str]:
    b = next(b for b in api.get("/brands")["brands"] if b["name"] == brand)
    return [b["ok_class"], *(c for c in b["classes"] if c != b["ok_class"])]


def train_config(api: CloudApi, epochs: int = 3, batch_size: int = 16) -> dict[str, Any]:
    """A small CNN on 32x32 images: seconds per epoch on the factory's small history."""
    return {"classes": classes(api), "architecture": "small_cnn", "input_size": 32, "epochs": epochs,
            "learning_rate": 0.003, "generators": {"batch_size": batch_size, "validation_split": 0.2,
                                                   "test_split": 0.2, "class_weights": "balanced"}}


def start_train(api: CloudApi, epochs: int = 3, batch_size: int = 16,
                detectors: tuple[str, ...] = DETECTORS) -> dict[str, Any]:
    body = {"line": LINE_KEY, "brand": BRAND, "detectors": list(detectors),
            "config": train_config(api, epochs, batch_size)}
    task = api.post("/tasks/train", body)
    log.info("train task %s created (%s epochs)", task["id"], epochs)
    return task


def evaluated_model(api: CloudApi, version_id: int, timeout: float = 90.0) -> dict[str, Any]:
    """The registry's version once its evaluation gate has run."""
    return wait_until(lambda: (m := _api_get(api, f"/models/{version_id}"))["gate_state"] != "pending" and m,
                      timeout, f"evaluation of model version {version_id}", interval=0.5)


def start_deploy(api: CloudApi, model: dict[str, Any], detectors: list[str]) -> dict[str, Any]:
    body = {"line": LINE_KEY, "brand": BRAND, "detectors": detectors, "model_version": model["id"],
            "override": model["gate_state"] != "approved"}
    task = api.post("/tasks/deploy", body)
    log.info("deploy task %s created: version %s (%s) to %s", task["id"], model["id"], model["sha256"][:12],
             detectors)
    return task


def versions(api: CloudApi) -> list[dict[str, Any]]:
    """Registered versions of the line's brand, oldest first."""
    rows = _api_get(api, f"/models?line={LINE_KEY}&brand={BRAND}")
    rows = rows["models"] if isinstance(rows, dict) else rows
    return sorted(rows, key=lambda m: m["id"])


def produced_version(task: dict[str, Any]) -> dict[str, Any] | None:
    """The registry version a training task registered (its reference: id, version, model), or None."""
    return task.get("model_version") or (task.get("models") or [None])[0]


def final_details(task: dict[str, Any], state: str = "SUCCEEDED") -> dict[str, Any]:
    return next((e.get("details") or {} for e in reversed(task.get("events", [])) if e["state"] == state), {})


def record_problems(task: dict[str, Any], epochs: int, api: CloudApi | None = None) -> list[str]:
    """What is missing from a finished training task's record: events, epoch metrics, final state, the version."""
    problems = []
    if task["state"] != "SUCCEEDED":
        problems.append(f"state {task['state']} ({task.get('reason')}), events: {describe_events(task)}")
    states = [e["state"] for e in task.get("events", [])]
    for needed in ("QUEUED", "DISPATCHED", "ACCEPTED", "IN_PROGRESS", "MODEL_UPLOADED", "SUCCEEDED"):
        if needed not in states:
            problems.append(f"no {needed} event (events: {states})")
    have = sorted(e["epoch"] for e in task.get("epochs", []) if e["phase"] == "head")
    if have != list(range(1, epochs + 1)):
        problems.append(f"epoch metrics for epochs {have}, expected 1..{epochs}")
    if not task.get("points"):
        problems.append("no progress points")
    if task["state"] == "SUCCEEDED" and not task.get("finished_at"):
        problems.append("no finished_at")
    ref = produced_version(task)
    if ref is None:
        problems.append("no registered model version")
    else:
        details = final_details(task)
        if details.get("sha256") and details["sha256"] != ref["model"]:
            problems.append(f"the edge uploaded {details['sha256'][:12]}, the registry has {ref['model'][:12]}")
        if api is not None:
            try:
                model = evaluated_model(api, ref["id"], timeout=90)
            except AssertionError as exc:
                problems.append(str(exc))
            else:
                if model["lineage"]["task"] != task["id"] or model["size"] <= 0 or len(model["sha256"]) != 64:
                    problems.append(f"version {ref['id']} lineage/file wrong: {model['lineage']} {model['size']}")
    return problems


def wait_idle(api: CloudApi, timeout: float) -> list[dict[str, Any]]:
    """Wait until no task of the line is active; cancel those still active after ``timeout``."""
    def active() -> list[dict[str, Any]]:
        return [t for t in _api_get(api, f"/tasks?line={LINE_KEY}&limit=100")["tasks"] if t["state"] in ACTIVE_STATES]
    try:
        wait_until(lambda: not active(), timeout, "no active task", interval=1.0)
        return []
    except AssertionError:
        left = active()
        for t in left:
            log.warning("task %s still %s: canceling it", t["id"], t["state"])
            with contextlib.suppress(ApiError):
                api.post(f"/tasks/{t['id']}/cancel", {"reason": "fault test cleanup"})
        return left


# ---- the fleet -------------------------------------------------------------------------------------

def node_keys() -> list[str]:
    return [LINE_KEY, *(det_user(d) for d in DETECTORS)]


def offline_nodes(api: CloudApi, keys: list[str], since: float | None = None) -> dict[str, Any]:
    """Nodes not online (or whose birth is older than ``since``), with what the fleet says of them."""
    nodes = api.nodes()
    bad = {}
    for key in keys:
        n = nodes.get(key)
        if n is None or not n["online"] or (since is not None and (n.get("since") or 0) < since - 1):
            bad[key] = None if n is None else {"online": n["online"], "since": n.get("since"), "reason": n["reason"]}
    return bad


def wait_online(api: CloudApi, keys: list[str], timeout: float, since: float | None = None) -> None:
    """Every node online in GET /fleet, each with a birth newer than ``since`` (a reconnect) when given."""
    bad: dict[str, Any] = {}

    def ok() -> bool:
        nonlocal bad
        try:
            bad = offline_nodes(api, keys, since)
        except ApiError as exc:
            bad = {"api": str(exc)}
        return not bad
    try:
        wait_until(ok, timeout, "nodes online", interval=0.5)
    except AssertionError:
        raise AssertionError(f"not online{' since ' + str(since) if since else ''} within {timeout:.0f} s: "
                             f"{bad}") from None


def ensure_running(f: Factory) -> list[str]:
    """Continue any frozen process and start again every one that is not running (a fault left it down);
    the names of those started."""
    for name in f.names:
        if name != "broker":  # the broker's harness takes no signals; it is never frozen here
            thaw(f, name)
    down = [n for n in f.names if not f.process(n).running]
    for name in (["broker"] if "broker" in down else []) + [n for n in down if n != "broker"]:
        log.warning("%s is not running: starting it again", name)
        f.start_process(name)
    return down


def freeze(f: Factory, name: str) -> None:
    """SIGSTOP a process: a hang (its TCP connections stay open, what is sent to it waits in its sockets)."""
    f.process(name).signal(signal.SIGSTOP)
    log.info("%s frozen (SIGSTOP)", name)


def thaw(f: Factory, name: str) -> None:
    """SIGCONT a frozen process (nothing when it is not running)."""
    child = f.process(name)
    if child.running:
        child.signal(signal.SIGCONT)
        log.info("%s continued (SIGCONT)", name)


@contextlib.contextmanager
def frozen(f: Factory, *names: str) -> Iterator[None]:
    """The processes frozen (SIGSTOP) inside the block, continued (SIGCONT) on exit if still running."""
    for name in names:
        freeze(f, name)
    try:
        yield
    finally:
        for name in names:
            thaw(f, name)


class LogMark:
    """What the factory's processes wrote to their logs since this mark, e.g. tracebacks during a fault."""

    def __init__(self, f: Factory) -> None:
        self.f = f
        self.offsets = {n: self._size(n) for n in f.names}

    def _size(self, name: str) -> int:
        try:
            return os.path.getsize(self.f.process(name).log_path)
        except OSError:
            return 0

    def new_text(self, name: str) -> str:
        try:
            with open(self.f.process(name).log_path, "rb") as fh:
                fh.seek(self.offsets.get(name, 0))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tracebacks(self) -> dict[str, list[str]]:
        """Per process, the lines that start a traceback or log a handler exception, written since the mark."""
        out = {}
        for name in self.f.names:
            lines = self.new_text(name).splitlines()
            hits = [lines[i - 1] if i else line for i, line in enumerate(lines)
                    if line.startswith("Traceback (most recent call last)")]
            if hits:
                out[name] = hits[:10]
        return out


# ---- the bus --------------------------------------------------------------------------------------

def _paho(client_id: str, username: str, password: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                    protocol=MQTTProtocolVersion.MQTTv311)
    c.username_pw_set(username, password)
    c.reconnect_delay_set(0.2, 2)
    return c


def _close_paho(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()
    sock = c.socket()
    if sock is not None:
        sock.close()
    c._reset_sockets()  # paho closes its internal socket pair only in __del__ (a ResourceWarning otherwise)


def _mqtt_endpoint(f: Factory, username: str) -> tuple[str, int, str]:
    m = f.info()["mqtt"]
    assert f.secrets is not None
    return m["host"], int(m["port"]), f.secrets.mqtt[username]


@dataclass(eq=False)
class Seen:
    """One message the tap received: when (time.time()), where, and its decoded form if valid."""

    t: float
    topic: str
    payload: bytes
    size: int
    retain: bool
    name: str | None
    ids: dict[str, str]

    @cached_property
    def message(self) -> Message | None:
        if self.name is None or len(self.payload) != self.size:
            return None
        try:
            return decode(self.payload, contract().topic(self.name).payload)
        except MessageError:
            return None

    @property
    def body(self) -> Any:
        return self.message.body if self.message is not None else None

    @property
    def cid(self) -> str | None:
        return self.message.correlation_id if self.message is not None else None


class BusTap:
    """Records every message under ``fab/v1/#`` as the cloud user; reconnects and resubscribes by itself."""

    def __init__(self, host: str, port: int, password: str, username: str = CLOUD_USER) -> None:
        self.host, self.port = host, port
        self.client = _paho(f"fault-tap-{uuid.uuid4().hex[:8]}", username, password)
        self.client.on_connect, self.client.on_message = self._on_connect, self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._cond = threading.Condition()
        self._seen: list[Seen] = []
        self._subscribed = False
        self.connects = 0
        self._match: dict[str, tuple[str | None, dict[str, str]]] = {}

    @classmethod
    def of(cls, f: Factory) -> BusTap:
        return cls(*_mqtt_endpoint(f, CLOUD_USER))

    # paho callbacks (network thread): record only
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self.connects += 1
            client.subscribe("fab/v1/#", 1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any, props: Any) -> None:
        with self._cond:
            self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        name, ids = self._match.get(msg.topic) or self._lookup(msg.topic)
        payload = bytes(msg.payload) if len(msg.payload) <= TAP_KEEP_BYTES else b""
        seen = Seen(time.time(), msg.topic, payload, len(msg.payload), bool(msg.retain), name, ids)
        with self._cond:
            self._seen.append(seen)
            self._cond.notify_all()

    def _lookup(self, topic: str) -> tuple[str | None, dict[str, str]]:
        found = contract().match(topic)
        got = (found[0].name, found[1]) if found else (None, {})
        if len(self._match) < 10_000:
            self._match[topic] = got
        return got

    def start(self, timeout: float = 15.0) -> BusTap:
        self.client.connect_async(self.host, self.port, 30)
        self.client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._subscribed, timeout):
                raise AssertionError(f"bus tap: not subscribed within {timeout:.0f} s")
        return self

    def close(self) -> None:
        _close_paho(self.client)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # queries (any thread)
    def seen(self, name: str | None = None, *, since: float = 0.0, live: bool = False,
             type_: str | None = None, **ids: str) -> list[Seen]:
        """Messages on contract topic ``name`` with these ids, received at or after ``since``; ``live``: not
        retained replays; ``type_``: valid messages of that type only."""
        with self._cond:
            rows = list(self._seen)
        out = []
        for s in rows:
            if s.t < since or (name is not None and s.name != name) or (live and s.retain):
                continue
            if any(s.ids.get(k) != v for k, v in ids.items()):
                continue
            if type_ is not None and (s.message is None or s.message.type != type_):
                continue
            out.append(s)
        return out

    def forget(self) -> None:
        """Drop what was recorded (a flood's thousands of messages)."""
        with self._cond:
            self._seen.clear()

    def wait(self, predicate: Callable[[], T], timeout: float, what: str) -> T:
        """The predicate's first truthy value, re-checked on each message (and every 0.5 s)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{what}: not seen on the bus within {timeout:.0f} s")
            with self._cond:
                self._cond.wait(min(left, 0.5))

    # what the tests look for
    def training_progress(self, task: str, since: float = 0.0) -> list[Any]:
        return [s.body for s in self.seen("task_progress", since=since, live=True, task=task,
                                          type_="TrainingProgress")]

    def statuses(self, det: str, since: float = 0.0) -> list[Seen]:
        return self.seen("detector_status", since=since, live=True, det=det, type_="DetectorStatus")

    def active_shas(self, det: str, since: float = 0.0) -> list[str | None]:
        """The sha256 active for the brand in each of the detector's status messages (None: no model)."""
        out = []
        for s in self.statuses(det, since):
            active = s.body.active_models.get(BRAND)
            out.append(active.sha256 if active else None)
        return out


class Impostor:
    """A raw MQTT client logged in as one of the factory's users, with its own client id (the node keeps its
    connection): publishes whatever it is given, as that user's ACL allows."""

    def __init__(self, host: str, port: int, username: str, password: str) -> None:
        self.username = username
        self.host, self.port = host, port
        self.client = _paho(f"fault-{username.replace('/', '.')}-{uuid.uuid4().hex[:6]}", username, password)
        self._connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: rc.is_failure or self._connected.set()

    @classmethod
    def of(cls, f: Factory, username: str) -> Impostor:
        host, port, password = _mqtt_endpoint(f, username)
        return cls(host, port, username, password)

    def start(self, timeout: float = 15.0) -> Impostor:
        self.client.connect_async(self.host, self.port, 30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise AssertionError(f"impostor {self.username}: not connected within {timeout:.0f} s")
        return self

    def close(self) -> None:
        _close_paho(self.client)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos, retain)

    def publish_body(self, topic_name: str, body: Body, *, correlation_id: str | None = None, qos: int | None = None,
                     **ids: str) -> mqtt.MQTTMessageInfo:
        topic = contract().topic(topic_name)
        payload = encode(body, sender=self.username, correlation_id=correlation_id)
        return self.publish(topic.format(**ids), payload, topic.qos if qos is None else qos)


def wait_published(infos: list[mqtt.MQTTMessageInfo], timeout: float) -> None:
    """Wait until every QoS 1 publish of ``infos`` was acknowledged by the broker."""
    deadline = time.monotonic() + timeout
    for info in infos:
        if info.is_published():
            continue
        info.wait_for_publish(max(0.01, deadline - time.monotonic()))
        if not info.is_published():
            pending = sum(not i.is_published() for i in infos)
            raise AssertionError(f"{pending} of {len(infos)} publishes not acknowledged within {timeout:.0f} s")


# ---- chunks ---------------------------------------------------------------------------------------

def bundle_bytes(f: Factory, sha256: str) -> bytes:
    """A registered model's file, from the cloud's content-addressed store (what every delivery sends)."""
    path = f.workdir / "cloud" / "models" / sha256[:2] / f"{sha256}.bundle"
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256, f"{path} does not hash to its name"
    return data


def chunks_of(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i:i + chunk_size] for i in range(0, len(data), chunk_size)]


def flip_bits(data: bytes, rng: random.Random, count: int = 3) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


# ---- a flood of garbage ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Shot:
    username: str
    topic: str
    payload: bytes
    qos: int
    kind: str


@dataclass
class FloodPlan:
    shots: list[Shot] = field(default_factory=list)

    def by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.shots:
            out[s.kind] = out.get(s.kind, 0) + 1
        return out

    def topics(self) -> set[str]:
        return {s.topic for s in self.shots}


def subscribed_topics() -> list[Topic]:
    """Every contract topic some role subscribes to (edge, detector or cloud: every process of the factory)."""
    return [t for t in contract().topics.values() if t.subscribers]


def _publisher(topic: Topic, det: str) -> str:
    """The factory user allowed to publish on ``topic``: the edge for edge topics, the detector for its own."""
    for role in ("edge", "detector", "cloud"):
        if role in topic.publishers:
            return {"edge": EDGE_USER, "detector": det_user(det), "cloud": CLOUD_USER}[role]
    raise AssertionError(f"{topic.name}: no publisher role")


def _concrete(topic: Topic, rng: random.Random, task_ids: list[str]) -> list[tuple[str, str]]:
    """(publisher, concrete topic) pairs covering the topic for each detector where it has one."""
    dets = DETECTORS if "det" in topic.placeholders else DETECTORS[:1]
    out = []
    for det in dets:
        ids = {"site": SITE, "line": LINE, "det": det, "task": rng.choice(task_ids),
               "model": hashlib.sha256(rng.randbytes(8)).hexdigest(), "brand": rng.choice([BRAND, "brandA"]),
               "node": "cloud-listener"}
        out.append((_publisher(topic, det), topic.format(**{k: ids[k] for k in topic.placeholders})))
    return out


def _envelope(type_: str, body: Any, **over: Any) -> dict[str, Any]:
    env = {"schema": 1, "type": type_, "id": uuid.uuid4().hex, "correlation_id": None, "ts": time.time(),
           "sender": "fault-flood", "body": body}
    env.update(over)
    return env


def _garbage(kind: str, topic: Topic, rng: random.Random, examples: dict[str, Body]) -> bytes:
    own = examples[rng.choice(topic.payload)]
    own_json = own.model_dump(mode="json")
    if kind == "random_bytes":
        return rng.randbytes(rng.randrange(1, 600))
    if kind == "not_utf8":
        return b'{"schema": 1, "type": "\xff\xfe", "body": {}}'
    if kind == "empty":
        return b""
    if kind == "truncated_json":
        full = encode(own, sender="fault-flood")
        return full[:rng.randrange(1, len(full) - 1)]
    if kind == "wrong_type":
        others = [n for n in examples if n not in topic.payload]
        other = examples[rng.choice(others)]
        return encode(other, sender="fault-flood")
    if kind == "extra_field":
        return json.dumps(_envelope(type(own).__name__, {**own_json, "forged": rng.random()})).encode()
    if kind == "wrong_field_types":
        body = {k: rng.choice([[1, 2], {"x": None}, True, -1.5e308, "\u0000" * 3]) for k in own_json}
        body[next(iter(own_json))] = [[["deep"]]]
        return json.dumps(_envelope(type(own).__name__, body)).encode()
    if kind == "missing_body":
        env = _envelope(type(own).__name__, None)
        del env["body"]
        return json.dumps(env).encode()
    if kind == "bad_envelope":
        over = rng.choice([{"schema": 2}, {"id": ""}, {"ts": "yesterday"}, {"sender": ""}, {"type": 7},
                           {"correlation_id": "x" * 500}, {"unexpected": 1}])
        return json.dumps(_envelope(type(own).__name__, own_json, **over)).encode()
    if kind == "unknown_type":
        return json.dumps(_envelope("SelfDestruct", {"now": True})).encode()
    if kind == "not_an_object":
        return rng.choice([b"[]", b"42", b'"text"', b"null", b"NaN", b"Infinity", b"[" * 5000 + b"]" * 5000,
                           b'{"schema": 1}'])
    if kind == "oversized":
        pad = "A" * (MAX_PAYLOAD_BYTES + 1024)
        return json.dumps(_envelope("ErrorReport", {"code": "x", "message": pad})).encode()
    raise ValueError(kind)


KINDS = ("random_bytes", "not_utf8", "empty", "truncated_json", "wrong_type", "extra_field", "wrong_field_types",
         "missing_body", "bad_envelope", "unknown_type", "not_an_object")


def flood_plan(total: int, seed: int, task_ids: list[str]) -> FloodPlan:
    """``total`` invalid messages spread over every subscribed topic (one oversized message per topic), each
    from the user allowed to publish there; checked to be invalid for the topic they go to."""
    rng = random.Random(seed)
    examples = {name: example_body(name) for name in MESSAGE_TYPES}
    targets = [(t, user, concrete) for t in subscribed_topics() for user, concrete in _concrete(t, rng, task_ids)]
    plan = FloodPlan()
    for topic, user, concrete in targets[:total]:
        plan.shots.append(Shot(user, concrete, _garbage("oversized", topic, rng, examples), 1, "oversized"))
    while len(plan.shots) < total:
        topic, user, concrete = targets[len(plan.shots) % len(targets)]
        kind = KINDS[rng.randrange(len(KINDS))]
        qos = rng.choice([0, topic.qos])
        plan.shots.append(Shot(user, concrete, _garbage(kind, topic, rng, examples), qos, kind))
    rng.shuffle(plan.shots)
    for shot in plan.shots:
        found = contract().match(shot.topic)
        assert found is not None, shot.topic
        try:
            decode(shot.payload, found[0].payload)
        except MessageError:
            continue
        raise AssertionError(f"the flood would carry a valid message on {shot.topic}: {shot.payload[:200]!r}")
    return plan
