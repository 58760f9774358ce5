"""Commands on tasks, with field-level validation. Each works in the caller's session.

    task = create_train_task(s, line="s1/l1", brand="brandA", detectors=["d1"], config={...}, user="alice")
    task = create_deploy_task(s, line="s1/l1", brand="brandA", detectors=["d1"], model_version=7, user="alice")
    task, send = cancel_task(s, task.id, user="alice")    # send: a CancelCommand must go to the edge

Unknown names raise NotFound (field and name in the error), bad values Invalid
(``fields`` maps dotted paths to messages), requests that do not fit the state Conflict.
The caller commits, then enqueues the dispatch (cloud_app.backend.Backend does both).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from fabbus.training_config import TrainingConfig

from cloud_app.errors import Conflict, Invalid, NotFound
from cloud_app.fleet import find_brand, find_line, line_detectors
from cloud_app.models import ACTIVE_TASK_STATES, Change, Deployment, Line, ModelVersion, Node, Task, TaskEvent, now

CANCELABLE = (*ACTIVE_TASK_STATES, "TIMED_OUT", "INTERRUPTED")


def new_task_id(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:16]}"


def record(s: Session, task: Task, state: str, reason: str = "", *, source: str = "cloud",
           details: dict[str, Any] | None = None, msg_id: str | None = None, ts: float | None = None) -> TaskEvent:
    """Add a TaskEvent and a change-feed entry for ``task``."""
    event = TaskEvent(task_id=task.id, state=state, reason=reason, details=details or {}, source=source,
                      ts=ts or now(), msg_id=msg_id)
    s.add(event)
    s.add(Change(kind="task", ref=task.id))
    task.updated_at = now()
    return event


def set_state(s: Session, task: Task, state: str, reason: str = "", *, source: str = "cloud",
              details: dict[str, Any] | None = None, msg_id: str | None = None) -> None:
    """Change a task's state and record it."""
    task.state, task.reason = state, reason
    if state not in ACTIVE_TASK_STATES:
        task.finished_at = task.finished_at or now()
        task.dispatch_lease = None
    else:
        task.finished_at = None
    record(s, task, state, reason, source=source, details=details, msg_id=msg_id)


def _detectors(s: Session, line: Line, detectors: Any) -> list[Node]:
    if not isinstance(detectors, list) or not detectors:
        raise Invalid({"detectors": "name at least one detector"})
    known = line_detectors(s, line)
    nodes: list[Node] = []
    for i, d in enumerate(detectors):
        if not isinstance(d, str) or d not in known:
            raise NotFound("detector", d, f"detectors.{i}")
        if known[d] not in nodes:
            nodes.append(known[d])
    return nodes


def _training_config(config: Any) -> TrainingConfig:
    if isinstance(config, TrainingConfig):
        return config
    if not isinstance(config, Mapping):
        raise Invalid({"config": "must be an object (the training configuration)"})
    try:
        return TrainingConfig.model_validate(dict(config))
    except ValidationError as exc:
        raise Invalid({".".join(["config", *(str(p) for p in e["loc"])]): e["msg"].removeprefix("Value error, ")
                       for e in exc.errors()}) from None


def find_version(s: Session, ref: Any, field: str = "model_version", line: Line | None = None) -> ModelVersion:
    """A registry version by row id (int or digits) or by model id (its sha256; this line's row first)."""
    mv: ModelVersion | None = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 12):
        mv = s.get(ModelVersion, int(ref))
    elif isinstance(ref, str):
        rows = list(s.scalars(select(ModelVersion).where(ModelVersion.sha256 == ref).order_by(ModelVersion.id)))
        mv = next((r for r in rows if line is not None and r.line_id == line.id), rows[0] if rows else None)
    if mv is None:
        raise NotFound("model version", ref, field)
    return mv


def _new_task(s: Session, kind: str, line: Line, brand: str, nodes: list[Node], user: str,
              **fields: Any) -> Task:
    task = Task(id=new_task_id(kind), kind=kind, line_id=line.id, brand=brand, detectors=[n.name for n in nodes],
                state="QUEUED", reason="", created_by=user, dispatch_attempts=0, percent=0.0, **fields)
    s.add(task)
    s.flush()
    record(s, task, "QUEUED", f"created by {user}")
    return task


def create_train_task(s: Session, *, line: str, brand: str, detectors: list[str], config: Any,
                      user: str, base_model: str | int | None = None) -> Task:
    """A QUEUED training task; the classes must be the brand's, its OK class first."""
    line_row = find_line(s, line)
    brand_row = find_brand(s, brand)
    nodes = _detectors(s, line_row, detectors)
    cfg = _training_config(config)
    if set(cfg.classes) != set(brand_row.classes):
        raise Invalid({"config.classes": f"must be the classes of brand {brand}: {brand_row.classes}"})
    if cfg.classes[0] != brand_row.ok_class:
        raise Invalid({"config.classes": f"the first class must be the OK class {brand_row.ok_class!r}"})
    base_sha = None
    if base_model not in (None, ""):
        base = find_version(s, base_model, "base_model", line_row)
        if base.brand != brand:
            raise Invalid({"base_model": f"model version {base.id} is for brand {base.brand!r}, not {brand!r}"})
        cfg = _start_from_base(cfg, base)
        base_sha = base.sha256
    elif cfg.pretrained.source == "base_model":
        raise Invalid({"base_model": "pretrained.source 'base_model' needs base_model: the registry version to "
                                     "start from"})
    return _new_task(s, "train", line_row, brand, nodes, user, config=cfg.model_dump(mode="json"),
                     base_model=base_sha)


def _start_from_base(cfg: TrainingConfig, base: ModelVersion) -> TrainingConfig:
    """The config of a task that starts from registry version ``base``: pretrained.source 'base_model'
    (set when left 'none'), and an architecture (and width) the base's weights fit."""
    source = cfg.pretrained.source
    if source not in ("none", "base_model"):
        raise Invalid({"base_model": f"the task starts from model version {base.id}, but pretrained.source is "
                                     f"{source!r}: leave it 'none' or set 'base_model'"})
    theirs = base.training_config or {}
    arch, alpha = theirs.get("architecture"), theirs.get("alpha", 1.0)
    if arch is not None and (arch, alpha) != (cfg.architecture, cfg.alpha):
        mine = cfg.architecture + (f" alpha {cfg.alpha:g}" if cfg.architecture == "mobilenet_v2" else "")
        other = arch + (f" alpha {alpha:g}" if arch == "mobilenet_v2" else "")
        raise Invalid({"base_model": f"model version {base.id} (v{base.version} of {base.line.key}) is a {other}; "
                                     f"its weights cannot start a {mine}"})
    return cfg.model_copy(update={"pretrained": cfg.pretrained.model_copy(update={"source": "base_model"})})


def create_deploy_task(s: Session, *, line: str, brand: str, detectors: list[str], model_version: int | str,
                       user: str, canary: bool = False, override: bool = False) -> Task:
    """A QUEUED deployment with one PENDING Deployment per detector.

    A version the gate did not approve (rejected or still pending) needs ``override=True``;
    the deployments then record who overrode it.
    """
    line_row = find_line(s, line)
    find_brand(s, brand)
    nodes = _detectors(s, line_row, detectors)
    mv = find_version(s, model_version, "model_version", line_row)
    if mv.brand != brand:
        raise Invalid({"model_version": f"model version {mv.id} is for brand {mv.brand!r}, not {brand!r}"})
    overridden = mv.gate_state != "approved"
    if overridden and not override:
        why = "; ".join(mv.gate_reasons) if mv.gate_reasons else "not evaluated yet"
        raise Invalid({"override": f"model version {mv.id} (v{mv.version}) is {mv.gate_state} by the evaluation "
                                   f"gate ({why}); deploying it needs an explicit override"})
    task = _new_task(s, "deploy", line_row, brand, nodes, user, model_version_id=mv.id,
                     config={"canary": bool(canary), "override": overridden, "model": mv.sha256,
                             "version": mv.version})
    for node in nodes:
        s.add(Deployment(task_id=task.id, model_version_id=mv.id, node_id=node.id, detector=node.name, brand=brand,
                         state="PENDING", percent=0.0, reason="", override_by=user if overridden else None))
    if overridden:
        record(s, task, "OVERRIDE", f"{user} deploys {mv.gate_state} version v{mv.version}",
               details={"gate_state": mv.gate_state, "gate_reasons": mv.gate_reasons})
    return task


def cancel_task(s: Session, task_id: str, *, user: str, reason: str = "") -> tuple[Task, bool]:
    """Cancel a task; True when a CancelCommand must go to the edge.

    A task not acknowledged yet is CANCELED at once (its dispatch stops); one that timed
    out or was interrupted too (its edge may be gone). The edge is told whenever it may
    hold the task; a running task stays running until the edge reports CANCELED.
    """
    task = s.get(Task, task_id) if isinstance(task_id, str) else None
    if task is None:
        raise NotFound("task", task_id)
    if task.state not in CANCELABLE:
        raise Conflict(f"task {task_id} is {task.state}; only a queued or running task can be canceled",
                       {"task": f"task is {task.state}"})
    why = reason or f"canceled by {user}"
    task.cancel_requested_by, task.cancel_requested_at = user, now()
    if task.state == "QUEUED":  # not acknowledged: stop dispatching; tell the edge if it may have it
        sent = task.dispatch_attempts > 0
        set_state(s, task, "CANCELED", why)
        return task, sent
    if task.state in ("TIMED_OUT", "INTERRUPTED"):
        set_state(s, task, "CANCELED", why)
    else:
        record(s, task, "CANCEL_REQUESTED", why)
    return task, True
