"""Persisting what the edges and detectors report, idempotently. One function per topic.

Each takes a session and a fabbus ReceivedMessage (topic ids, decoded message, retain flag).
QoS 1 duplicates and retained replays are harmless: events are keyed by message id,
epoch metrics and chart points by (task, phase, epoch[, batch]), and state is applied
only from a message newer (envelope ``ts``) than the one applied before. A retained
replay is old news: it never counts as hearing from a node now.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from fabbus.client import ReceivedMessage
from fabbus.messages import (CollectionProgress, DeliveryStatus, DeploymentProgress, DetectorStatus, EpochMetrics,
                             NodeState, TaskStatus, TrainingProgress)

from cloud_app.fleet import discover_node, find_node
from cloud_app.models import (FINAL_TASK_STATES, Change, Deployment, DetectorModel, EpochMetric,
                              ModelVersion, Node, NodeEvent, ProgressPoint, Task, TaskEvent, now)
from cloud_app.services import record, set_state

log = logging.getLogger(__name__)

RESUMABLE = ("QUEUED", "ACCEPTED", "TIMED_OUT", "INTERRUPTED")   # progress from the edge means it runs


def _node(s: Session, kind: str, ids: dict[str, str], discover: bool) -> Node | None:
    site, line, det = ids["site"], ids["line"], ids.get("det")
    node = find_node(s, kind, site=site, line=line, det=det)
    if node is None and discover:
        node = discover_node(s, kind, site=site, line=line, det=det)
    return node


def _heard(s: Session, node: Node | None, rm: ReceivedMessage) -> None:
    if node is not None and not rm.retain:
        node.last_seen = now()


def on_node_state(s: Session, rm: ReceivedMessage, *, discover: bool = True) -> Node | None:
    """edge_state / detector_state: online flag, since, reason, version; a NodeEvent per message."""
    body: NodeState = rm.body  # type: ignore[assignment]
    kind = "detector" if rm.topic_name == "detector_state" else "edge"
    node = _node(s, kind, rm.ids, discover)
    if node is None:
        log.info("state of unknown %s %s ignored (fleet discovery is off)", kind, rm.ids)
        return None
    msg = rm.message
    if s.scalar(select(NodeEvent.id).where(NodeEvent.node_id == node.id, NodeEvent.msg_id == msg.id)) is not None:
        return node  # applied before (a QoS 1 duplicate or a retained replay)
    # No ordering by envelope ts here: a last will is encoded when armed, before the birth of the same
    # connection. The broker keeps one retained state per topic and delivers in order, so the newest
    # message received is the node's state; state_ts is when the cloud applied it (the cloud's clock).
    s.add(NodeEvent(node_id=node.id, online=body.online, reason=body.reason, ts=now(), msg_id=msg.id))
    node.online, node.reason, node.version = body.online, body.reason, body.version
    node.state_since, node.state_ts = body.since, now()
    if body.online:
        _heard(s, node, rm)
    s.add(Change(kind="node", ref=node.key))
    return node


def _task_for(s: Session, task_id: str, rm: ReceivedMessage) -> Task | None:
    task = s.get(Task, task_id)
    if task is None:
        log.info("%s for unknown task %s ignored", rm.topic_name, task_id)
        return None
    if task.line.key != f"{rm.ids['site']}/{rm.ids['line']}":
        log.warning("%s for task %s came from line %s/%s, not its line %s; ignored", rm.topic_name, task_id,
                    rm.ids["site"], rm.ids["line"], task.line.key)
        return None
    if not rm.retain:
        task.last_heard_at = now()
        _heard(s, _node(s, "edge", rm.ids, False), rm)
    return task


def on_task_status(s: Session, rm: ReceivedMessage) -> Task | None:
    """task_status: the acknowledgement (ACCEPTED/REJECTED) and every later state."""
    body: TaskStatus = rm.body  # type: ignore[assignment]
    msg = rm.message
    task = _task_for(s, body.task, rm)
    if task is None:
        return None
    if s.scalar(select(TaskEvent.id).where(TaskEvent.task_id == task.id, TaskEvent.msg_id == msg.id)) is not None:
        return task
    state, details = body.state.value, dict(body.details)
    stale = task.edge_status_ts is not None and msg.ts < task.edge_status_ts
    if stale or (task.state in FINAL_TASK_STATES and state != task.state):
        record(s, task, state, body.reason, source="edge", details={**details, "applied": False}, msg_id=msg.id,
               ts=msg.ts)
        return task
    task.edge_status_ts = msg.ts
    if state != "REJECTED" and task.accepted_at is None:
        task.accepted_at = now()
    task.dispatch_lease = None
    set_state(s, task, state, body.reason, source="edge", details=details, msg_id=msg.id)
    if state == "SUCCEEDED" and task.kind == "train":
        task.percent = 100.0
    return task


def _resume(s: Session, task: Task, rm: ReceivedMessage, what: str) -> None:
    """Progress from the edge proves the task runs: a missed ACCEPTED, or a task the edge resumed."""
    if rm.retain or task.state not in RESUMABLE:
        return
    if task.accepted_at is None:
        task.accepted_at = now()
    task.dispatch_lease = None
    set_state(s, task, "IN_PROGRESS", f"{what} received from the edge")


def on_task_progress(s: Session, rm: ReceivedMessage, *, max_points: int = 2000) -> Task | None:
    """task_progress: the latest progress; training progress also becomes a chart point."""
    body = rm.body
    task = _task_for(s, body.task, rm)  # type: ignore[attr-defined]
    if task is None:
        return None
    ts = rm.message.ts
    previous = task.progress or {}
    if isinstance(body, TrainingProgress):
        _add_point(s, task, body, ts, max_points)
    if ts < previous.get("ts", 0):
        return task
    data: dict[str, Any] = {"type": type(body).__name__, "ts": ts, **body.model_dump(mode="json")}
    if isinstance(body, CollectionProgress):
        collection = dict(previous.get("collection") or {})
        collection[body.detector] = data
        data = {**previous, "type": "CollectionProgress", "ts": ts, "collection": collection}
    elif isinstance(body, (TrainingProgress, DeploymentProgress)):
        if previous.get("collection"):
            data["collection"] = previous["collection"]
        task.percent = body.percent
    if isinstance(body, DeploymentProgress):
        _update_deployments(s, task, body)
    task.progress = data
    task.updated_at = now()
    s.add(Change(kind="progress", ref=task.id))
    _resume(s, task, rm, "progress")
    return task


def _add_point(s: Session, task: Task, p: TrainingProgress, ts: float, max_points: int) -> None:
    exists = s.scalar(select(ProgressPoint.id).where(ProgressPoint.task_id == task.id, ProgressPoint.phase == p.phase,
                                                     ProgressPoint.epoch == p.epoch, ProgressPoint.batch == p.batch))
    if exists is not None:
        return
    s.add(ProgressPoint(task_id=task.id, phase=p.phase, epoch=p.epoch, batch=p.batch, percent=p.percent,
                        accuracy=p.accuracy, loss=p.loss, ts=ts))
    s.flush()
    count = s.scalar(select(func.count(ProgressPoint.id)).where(ProgressPoint.task_id == task.id)) or 0
    if count > max_points:  # thin out: drop every other point, the curve keeps its whole span
        ids = list(s.scalars(select(ProgressPoint.id).where(ProgressPoint.task_id == task.id)
                             .order_by(ProgressPoint.id)))
        s.execute(delete(ProgressPoint).where(ProgressPoint.id.in_(ids[1:-1:2])))


def _update_deployments(s: Session, task: Task, body: DeploymentProgress) -> None:
    for d in task.deployments:
        det = body.detectors.get(d.detector)
        if det is None:
            continue
        if (d.state, d.percent, d.reason) != (det.state if isinstance(det.state, str) else det.state.value,
                                              det.percent, det.reason):
            d.state = det.state if isinstance(det.state, str) else det.state.value
            d.percent, d.reason, d.updated_at = det.percent, det.reason, now()
            s.add(Change(kind="deployment", ref=task.id))


def on_epoch_metrics(s: Session, rm: ReceivedMessage) -> Task | None:
    body: EpochMetrics = rm.body  # type: ignore[assignment]
    task = _task_for(s, body.task, rm)
    if task is None:
        return None
    row = s.scalar(select(EpochMetric).where(EpochMetric.task_id == task.id, EpochMetric.phase == body.phase,
                                             EpochMetric.epoch == body.epoch))
    if row is None:
        row = EpochMetric(task_id=task.id, phase=body.phase, epoch=body.epoch)
        s.add(row)
    for name in ("epochs", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "duration_s"):
        setattr(row, name, getattr(body, name))
    row.ts = rm.message.ts
    s.add(Change(kind="metrics", ref=task.id))
    _resume(s, task, rm, "epoch metrics")
    return task


def _version_by_sha(s: Session, sha256: str | None, node: Node) -> ModelVersion | None:
    if not sha256:
        return None
    rows = list(s.scalars(select(ModelVersion).where(ModelVersion.sha256 == sha256).order_by(ModelVersion.id)))
    return next((r for r in rows if r.line_id == node.line_id), rows[0] if rows else None)


def _set_active(s: Session, node: Node, brand: str, model: str, version: int | None, sha256: str) -> None:
    row = s.scalar(select(DetectorModel).where(DetectorModel.node_id == node.id, DetectorModel.brand == brand))
    if row is not None and row.sha256 == sha256:
        return
    mv = _version_by_sha(s, sha256, node)
    if row is None:
        row = DetectorModel(node_id=node.id, brand=brand)
        s.add(row)
    row.model, row.version, row.sha256 = model, version, sha256
    row.model_version_id = mv.id if mv else None
    row.activated_at = row.updated_at = now()
    s.add(Change(kind="node", ref=node.key))


_FINAL_DELIVERY = ("ACTIVE", "FAILED", "ROLLED_BACK")


def on_delivery_status(s: Session, rm: ReceivedMessage, *, discover: bool = True) -> None:
    """delivery_status: a detector's progress on a model for a brand; ACTIVE makes it the active model."""
    body: DeliveryStatus = rm.body  # type: ignore[assignment]
    node = _node(s, "detector", rm.ids, discover)
    if node is None:
        return
    _heard(s, node, rm)
    brand = rm.ids["brand"]
    # Only the deployment of the task named by the correlation id moves; a status without one (a transfer
    # no task asked for) leaves every deployment row alone, and a final row stays final (ACTIVE may
    # still become ROLLED_BACK when the new model fails its probation).
    task_id = rm.message.correlation_id
    d = None if not task_id else s.scalars(
        select(Deployment).where(Deployment.task_id == task_id, Deployment.node_id == node.id,
                                 Deployment.brand == brand)).first()
    if d is not None:
        state = body.state.value
        final = d.state in _FINAL_DELIVERY and not (d.state == "ACTIVE" and state == "ROLLED_BACK")
        if not final and (d.state, d.percent, d.reason) != (state, body.percent, body.reason):
            d.state, d.percent, d.reason, d.updated_at = state, body.percent, body.reason, now()
            s.add(Change(kind="deployment", ref=d.task_id))
    if body.state.value == "ACTIVE" and body.sha256:
        _set_active(s, node, brand, body.model, body.version, body.sha256)


def on_detector_status(s: Session, rm: ReceivedMessage, *, discover: bool = True) -> None:
    """detector_status: counters and latency (latest kept on the node) and the active model per brand."""
    body: DetectorStatus = rm.body  # type: ignore[assignment]
    node = _node(s, "detector", rm.ids, discover)
    if node is None:
        return
    _heard(s, node, rm)
    node.status = {"ts": rm.message.ts, **body.model_dump(mode="json", exclude={"active_models"})}
    s.add(Change(kind="node", ref=node.key))
    for brand, active in body.active_models.items():
        _set_active(s, node, brand, active.model, active.version, active.sha256)
