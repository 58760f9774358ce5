"""Server-Sent Events: a task's live progress, and a feed of task and node changes.

    GET /api/v1/tasks/<id>/events   events: task, progress, epoch, status; end when the task is final
    GET /api/v1/events              events: task, node, model (the change feed); ends after EVENT_MAX_S

Each stream polls the database every EVENT_POLL_S for rows newer than the last it sent
(a short read-only session per poll, none held while it waits), sends a keep-alive
comment when idle, and names its position in ``id:`` so that a reconnecting browser
resumes with Last-Event-ID.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_app import queries
from cloud_app.models import FINAL_TASK_STATES, EpochMetric, ModelVersion, Node, ProgressPoint, Task, TaskEvent
from cloud_app.web.api import check_id, operation
from cloud_app.web.errors import not_found
from cloud_app.web.state import db, web_state

log = logging.getLogger(__name__)

TERMINAL = (*FINAL_TASK_STATES, "TIMED_OUT")
TASK_REFS = ("task", "progress", "metrics", "deployment")


def frame(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _cursor(default: list[int], n: int) -> list[int]:
    raw = request.headers.get("Last-Event-ID", "")
    try:
        parts = [max(0, int(p)) for p in raw.split(".")] if raw else []
    except ValueError:
        parts = []
    return parts if len(parts) == n else default


def _response(gen: Iterator[str]) -> Response:
    resp = Response(gen, mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"
    return resp


def _pump(poll: Callable[[Session], tuple[list[str], bool]], readers: Callable[[], Session],
          poll_s: float, keepalive_s: float, max_s: float, name: str) -> Iterator[str]:
    """Call ``poll`` in a fresh read-only session until it says done or ``max_s`` passes."""
    yield "retry: 2000\n\n"
    deadline = time.monotonic() + max_s
    idle_since = time.monotonic()
    try:
        while True:
            with readers() as s:
                frames, done = poll(s)
            if frames:
                yield "".join(frames)
                idle_since = time.monotonic()
            if done or time.monotonic() >= deadline:
                return
            if time.monotonic() - idle_since >= keepalive_s:
                yield ": keep-alive\n\n"
                idle_since = time.monotonic()
            time.sleep(poll_s)
    except Exception:   # a stream is a boundary: log, end it; the browser reconnects
        log.exception("event stream %s failed", name)


def _task_brief(t: Task) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "line": t.line.key, "brand": t.brand, "state": t.state, "reason": t.reason,
            "percent": t.percent, "progress": t.progress, "created_at": t.created_at, "updated_at": t.updated_at,
            "deployments": [{"detector": d.detector, "state": d.state, "percent": d.percent, "reason": d.reason}
                            for d in t.deployments]}


class TaskPoller:
    """New rows of one task since the cursor (points, epoch metrics, events), and its summary when it changes."""

    def __init__(self, task_id: str, cursor: list[int]) -> None:
        self.task_id = task_id
        self.lp, self.le, self.lt = cursor
        self.last: dict[str, Any] | None = None
        self.head_epochs: int | None = None

    def __call__(self, s: Session) -> tuple[list[str], bool]:
        t = s.get(Task, self.task_id)
        if t is None:
            return [frame("end", {"state": "GONE"})], True
        if self.head_epochs is None:
            self.head_epochs = int((t.config or {}).get("epochs") or 0)
        out: list[str] = []
        brief = _task_brief(t)
        if brief != self.last:
            out.append(frame("task", brief))
            self.last = brief
        for p in s.scalars(select(ProgressPoint).where(ProgressPoint.task_id == t.id, ProgressPoint.id > self.lp)
                           .order_by(ProgressPoint.id).limit(2000)):
            self.lp = p.id
            out.append(frame("progress", {"id": p.id, "phase": p.phase, "epoch": p.epoch, "batch": p.batch,
                                          "percent": p.percent, "accuracy": p.accuracy, "loss": p.loss,
                                          "step": p.percent}, self._id()))
        for m in s.scalars(select(EpochMetric).where(EpochMetric.task_id == t.id, EpochMetric.id > self.le)
                           .order_by(EpochMetric.id)):
            self.le = m.id
            step = m.epoch + (self.head_epochs if m.phase == "finetune" else 0)
            out.append(frame("epoch", {"id": m.id, "phase": m.phase, "epoch": m.epoch, "epochs": m.epochs,
                                       "loss": m.loss, "accuracy": m.accuracy, "val_loss": m.val_loss,
                                       "val_accuracy": m.val_accuracy, "learning_rate": m.learning_rate,
                                       "duration_s": m.duration_s, "step": step}, self._id()))
        for e in s.scalars(select(TaskEvent).where(TaskEvent.task_id == t.id, TaskEvent.id > self.lt)
                           .order_by(TaskEvent.id)):
            self.lt = e.id
            out.append(frame("status", {"id": e.id, "state": e.state, "reason": e.reason, "source": e.source,
                                        "ts": e.ts}, self._id()))
        done = t.state in TERMINAL
        if done:
            out.append(frame("end", {"state": t.state}))
        return out, done

    def _id(self) -> str:
        return f"{self.lp}.{self.le}.{self.lt}"


class ChangePoller:
    """The change feed since the cursor, as task, node and model events (one per thing per poll)."""

    def __init__(self, cursor: int) -> None:
        self.cursor = cursor

    def __call__(self, s: Session) -> tuple[list[str], bool]:
        changes = queries.changes_since(s, self.cursor)
        if not changes:
            return [], False
        self.cursor = changes[-1]["id"]
        out: list[str] = []
        seen: set[tuple[str, str]] = set()
        for c in changes:
            kind = "task" if c["kind"] in TASK_REFS else c["kind"]
            if (kind, c["ref"]) in seen:
                continue
            seen.add((kind, c["ref"]))
            data = self._describe(s, kind, c["ref"])
            if data is not None:
                out.append(frame(kind, data))
        out.append(f"id: {self.cursor}\n\n")
        return out, False

    @staticmethod
    def _describe(s: Session, kind: str, ref: str) -> dict[str, Any] | None:
        if kind == "task":
            t = s.get(Task, ref)
            return _task_brief(t) if t is not None else None
        if kind == "node":
            n = s.scalar(select(Node).where(Node.key == ref))
            return queries.node_dict(n) if n is not None else None
        if kind == "model" and ref.isdigit():
            mv = s.get(ModelVersion, int(ref))
            return {"id": mv.id, "gate_state": mv.gate_state, "version": mv.version} if mv is not None else None
        return None


def _settings() -> tuple[float, float, float]:
    cfg = current_app.config
    return float(cfg["EVENT_POLL_S"]), float(cfg["EVENT_KEEPALIVE_S"]), float(cfg["EVENT_MAX_S"])


@operation("GET", "/tasks/<task_id>/events", tag="events", summary="Live progress of a task (text/event-stream)",
           stream=True, errors=(404,))
def task_events(task_id: str) -> Response:
    """Events ``task`` (summary with per-detector deployments), ``progress`` (per-batch accuracy and loss),
    ``epoch`` (epoch metrics), ``status`` (state changes) and ``end`` when the task is final."""
    check_id(task_id, "task")
    if db().get(Task, task_id) is None:
        raise not_found("task", task_id)
    poller = TaskPoller(task_id, _cursor([0, 0, 0], 3))
    poll_s, keepalive_s, max_s = _settings()
    return _response(_pump(poller, web_state().readers, poll_s, keepalive_s, max_s, f"task {task_id}"))


@operation("GET", "/events", tag="events", summary="Changes of tasks, nodes and models (text/event-stream)",
           stream=True)
def change_events() -> Response:
    """Events ``task`` (state and progress), ``node`` (online, last seen, active models) and ``model`` (gate
    result); the stream ends after a while and the browser reconnects where it left off."""
    start = _cursor([queries.latest_change_id(db())], 1)
    poll_s, keepalive_s, max_s = _settings()
    return _response(_pump(ChangePoller(start[0]), web_state().readers, poll_s, keepalive_s, max_s, "changes"))
