"""Light-weight simulated plant nodes: many real paho clients on one thread, no training.

    nodes = plant_nodes([LinePlan("plant", "line01", ("det1", "det2"), task="t1")], passwords)
    pool = NodePool("127.0.0.1", 1883, nodes, Traffic(status_period=2.0))   # bench.sim_pool

Each node is a paho client with real credentials (username = its scope) that a
bench.sim_pool.NodePool drives through paho's external-loop API, so that one thread
holds hundreds of nodes. A detector publishes its birth (retained, QoS 1;
its last will is the same topic, offline) and a retained DetectorStatus every
``status_period``; an edge publishes its birth and, when its line has a task,
TrainingProgress at ``progress_hz`` and EpochMetrics at every epoch's end; it
answers each command with a TaskStatus and records the command's latency (envelope
``ts`` to receipt). Every topic comes from topics.yaml; every payload is a real
fabbus message.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fabbus.acl import username_for
from fabbus.errors import MessageError
from fabbus.messages import (ActiveModel, Body, DetectorStatus, EpochMetrics, NodeState, TaskStatus, TrainingProgress,
                             decode, encode)
from fabbus.topics import contract

log = logging.getLogger(__name__)

SIM_SHA = "0" * 64
_ACTIVE = ActiveModel(model="sim", version=1, sha256=SIM_SHA)
COMMANDS = ("TrainCommand", "DeployCommand", "CancelCommand")


@dataclass(frozen=True)
class Traffic:
    status_period: float = 2.0   # s between a detector's DetectorStatus
    progress_hz: float = 5.0     # TrainingProgress per second of a training edge
    batches: int = 20            # progress messages per epoch; EpochMetrics after each epoch
    keepalive: int = 30


@dataclass(frozen=True)
class LinePlan:
    site: str
    line: str
    detectors: tuple[str, ...]
    task: str | None = None      # the task whose progress this line's edge publishes, if any


class SimNode:
    """One edge or detector: a paho client that the pool drives, with its own counters."""

    def __init__(self, role: str, ids: dict[str, str], password: str, task: str | None = None) -> None:
        c = contract()
        self.role, self.ids, self.task = role, ids, task
        self.username = username_for(role, c, **ids)
        self.state_topic = c.topic(f"{role}_state").format(**ids)
        scope = {k: v for k, v in ids.items() if k in ("site", "line", "det")}
        self.filters = [(t.filter(**{k: v for k, v in scope.items() if k in t.placeholders}), t.qos)
                        for t in c.topics_for(role, "subscribe")]
        self.ready = self.refused = self.was_ready = False
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.latencies: list[float] = []     # command latencies (s), edges only
        self.sent_ts: list[float] = []       # when each of those commands was sent (envelope ts)
        self.seen: set[str] = set()          # command ids (QoS 1 is at-least-once)
        self.disconnects = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{self.username.replace('/', '.')}",
                                  protocol=MQTTProtocolVersion.MQTTv311, clean_session=True)
        self.client.username_pw_set(self.username, password)
        self.client.max_queued_messages_set(0)
        self.client.will_set(self.state_topic, self._state(False, "connection lost"), 1, True)
        self.client.on_connect, self.client.on_subscribe = self._on_connect, self._on_subscribe
        self.client.on_message, self.client.on_disconnect = self._on_message, self._on_disconnect

    def _state(self, online: bool, reason: str = "") -> bytes:
        body = NodeState(online=online, role=self.role, node=self.username, version="sim",  # type: ignore[arg-type]
                         since=time.time(), reason=reason)
        return encode(body, sender=self.username)

    def publish(self, kind: str, topic: str, body: Body | bytes, qos: int, retain: bool,
                correlation_id: str | None = None) -> mqtt.MQTTMessageInfo:
        payload = body if isinstance(body, bytes) else encode(body, sender=self.username,
                                                              correlation_id=correlation_id)
        info = self.client.publish(topic, payload, qos, retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.sent[kind] += 1
        return info

    # ---- traffic (the pool's timers call these)

    def publish_status(self, k: int, period: float, rate: float = 2.0) -> None:
        """The ``k``-th DetectorStatus of a station inspecting ``rate`` products a second."""
        inspected = int(k * period * rate)
        body = DetectorStatus(inspected=inspected, ng=inspected // 50, missed=0, latency_ms_p50=0.13,
                              latency_ms_p99=0.41, active_models={"brandA": _ACTIVE}, counters={"triggers": inspected})
        self.publish("status", contract().topic("detector_status").format(**self.ids), body, 0, True)

    def publish_progress(self, k: int, batches: int, hz: float, epochs: int = 1000) -> None:
        """The ``k``-th TrainingProgress of the edge's task (one per batch); EpochMetrics after each epoch."""
        task, c = self.task or "", contract()
        ids = {"site": self.ids["site"], "line": self.ids["line"], "task": task}
        epoch, batch = divmod(k, batches)
        acc = 1 - 0.5 / (1 + k / 50)
        self.publish("progress", c.topic("task_progress").format(**ids), TrainingProgress(
            task=task, epoch=epoch, epochs=epochs, batch=batch + 1, batches=batches,
            percent=min(100.0, 100 * (k + 1) / (epochs * batches)), accuracy=acc, loss=1 - acc,
            eta_s=1000.0, images_per_s=80.0), 0, True, correlation_id=task)
        if batch == batches - 1:
            self.publish("metrics", c.topic("task_metrics").format(**ids), EpochMetrics(
                task=task, epoch=epoch + 1, epochs=epochs, loss=1 - acc, accuracy=acc, val_loss=1 - acc,
                val_accuracy=acc, duration_s=batches / hz), 1, False, correlation_id=task)

    # ---- paho callbacks (the pool's thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self.refused = True
            log.error("%s refused: %s", self.username, reason_code)
            return
        client.subscribe(self.filters)
        self.publish("birth", self.state_topic, self._state(True), 1, True)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            self.refused = True
            log.error("%s: subscription refused: %s", self.username, refused)
        else:
            self.ready = self.was_ready = True

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.ready:
            self.disconnects += 1
            log.warning("%s disconnected: %s", self.username, reason_code)
        self.ready = False

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        name = self._topic_name(msg.topic)
        self.received[name] += 1
        if name != "edge_command":
            return
        try:
            m = decode(msg.payload, COMMANDS)
        except MessageError as exc:
            self.received["invalid"] += 1
            log.warning("%s: bad command on %s: %s", self.username, msg.topic, exc)
            return
        if m.id in self.seen:
            self.received["duplicate"] += 1
            return
        self.seen.add(m.id)
        self.latencies.append(now - m.ts)
        self.sent_ts.append(m.ts)
        task = m.body.task  # type: ignore[attr-defined]
        kind, state = ("cancel", "CANCELED") if m.type == "CancelCommand" else ("train", "ACCEPTED")
        topic = contract().topic("task_status").format(site=self.ids["site"], line=self.ids["line"], task=task)
        self.publish("ack", topic, TaskStatus(task=task, kind=kind, state=state), 1, True,  # type: ignore[arg-type]
                     correlation_id=m.correlation_id)

    @staticmethod
    def _topic_name(topic: str) -> str:
        found = contract().match(topic)
        return found[0].name if found else "unknown"


def plant_nodes(lines: list[LinePlan], passwords: dict[str, str]) -> list[SimNode]:
    """An edge per line and a detector per detector id, with their passwords by username."""
    nodes: list[SimNode] = []
    for lp in lines:
        ids = {"site": lp.site, "line": lp.line}
        nodes.append(SimNode("edge", ids, passwords[username_for("edge", **ids)], lp.task))
        for det in lp.detectors:
            dids = {**ids, "det": det}
            nodes.append(SimNode("detector", dids, passwords[username_for("detector", **dids)]))
    return nodes
