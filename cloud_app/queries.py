"""Read-only queries for the web layer: JSON-ready dicts (times are epoch seconds).

    fleet(s)                              sites -> lines -> edge + detectors (online, last seen, models per brand)
    brands(s)                             [{"name", "classes", "ok_class"}]
    list_tasks(s, state=, kind=, line=, limit=, offset=)
    task_detail(s, task_id)               the task, its events, epoch metrics, chart points, deployments
    progress_points(s, task_id, after_id) per-batch chart points newer than ``after_id``
    registry(s, line=, brand=, gate_state=)   versions with lineage and where each is active now
    model_detail(s, version_id)           one version, its evaluation, lineage chain and deployments
    changes_since(s, after_id)            the change feed: [{"id", "kind", "ref", "ts"}]; poll it for live pages
    latest_change_id(s)

Lookups of unknown ids raise cloud_app.errors.NotFound.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from cloud_app.errors import NotFound
from cloud_app.models import (Brand, Change, Deployment, DetectorModel, EpochMetric, Line, ModelVersion, Node,
                              ProgressPoint, Site, Task, TaskEvent)


def node_dict(n: Node) -> dict[str, Any]:
    out = {"key": n.key, "kind": n.kind, "name": n.name, "online": n.online, "last_seen": n.last_seen,
           "since": n.state_since, "reason": n.reason, "version": n.version, "configured": n.configured}
    if n.kind == "detector":
        out["status"] = n.status
        out["models"] = {m.brand: {"model": m.model, "version": m.version, "sha256": m.sha256,
                                   "model_version_id": m.model_version_id, "activated_at": m.activated_at}
                         for m in n.models}
    return out


def fleet(s: Session) -> list[dict[str, Any]]:
    out = []
    # four queries in all, whatever the plant's size (sites, lines, nodes, detector models)
    loaded = selectinload(Site.lines).selectinload(Line.nodes).selectinload(Node.models)
    for site in s.scalars(select(Site).options(loaded).order_by(Site.name)):
        lines = []
        for line in site.lines:
            edge = next((n for n in line.nodes if n.kind == "edge"), None)
            lines.append({"key": line.key, "name": line.name, "title": line.title, "configured": line.configured,
                          "edge": node_dict(edge) if edge else None,
                          "detectors": [node_dict(n) for n in line.nodes if n.kind == "detector"]})
        out.append({"site": site.name, "title": site.title, "lines": lines})
    return out


def brands(s: Session) -> list[dict[str, Any]]:
    return [{"name": b.name, "classes": list(b.classes), "ok_class": b.ok_class}
            for b in s.scalars(select(Brand).order_by(Brand.name))]


def _version_ref(mv: ModelVersion | None) -> dict[str, Any] | None:
    if mv is None:
        return None
    return {"id": mv.id, "version": mv.version, "brand": mv.brand, "line": mv.line.key, "model": mv.sha256,
            "gate_state": mv.gate_state}


def task_dict(t: Task) -> dict[str, Any]:
    return {"id": t.id, "kind": t.kind, "line": t.line.key, "brand": t.brand, "detectors": list(t.detectors),
            "state": t.state, "reason": t.reason, "config": t.config, "base_model": t.base_model,
            "model_version": _version_ref(t.model_version), "created_by": t.created_by,
            "created_at": t.created_at, "updated_at": t.updated_at, "finished_at": t.finished_at,
            "dispatch_attempts": t.dispatch_attempts, "dispatched_at": t.dispatched_at,
            "accepted_at": t.accepted_at, "last_heard_at": t.last_heard_at, "progress": t.progress,
            "percent": t.percent, "cancel_requested_by": t.cancel_requested_by}


def list_tasks(s: Session, *, state: str | None = None, kind: str | None = None, line: str | None = None,
               limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
    q = select(Task).order_by(Task.created_at.desc(), Task.id)
    if state:
        q = q.where(Task.state == state)
    if kind:
        q = q.where(Task.kind == kind)
    if line:
        q = q.join(Line, Task.line_id == Line.id).where(Line.key == line)
    return [task_dict(t) for t in s.scalars(q.limit(max(1, min(limit, 500))).offset(max(0, offset)))]


def _point(p: ProgressPoint) -> dict[str, Any]:
    return {"id": p.id, "phase": p.phase, "epoch": p.epoch, "batch": p.batch, "percent": p.percent,
            "accuracy": p.accuracy, "loss": p.loss, "ts": p.ts}


def progress_points(s: Session, task_id: str, after_id: int = 0, limit: int = 5000) -> list[dict[str, Any]]:
    q = (select(ProgressPoint).where(ProgressPoint.task_id == task_id, ProgressPoint.id > after_id)
         .order_by(ProgressPoint.id).limit(limit))
    return [_point(p) for p in s.scalars(q)]


def epoch_metrics(s: Session, task_id: str) -> list[dict[str, Any]]:
    q = select(EpochMetric).where(EpochMetric.task_id == task_id).order_by(EpochMetric.id)
    return [{"phase": m.phase, "epoch": m.epoch, "epochs": m.epochs, "loss": m.loss, "accuracy": m.accuracy,
             "val_loss": m.val_loss, "val_accuracy": m.val_accuracy, "learning_rate": m.learning_rate,
             "duration_s": m.duration_s, "ts": m.ts} for m in s.scalars(q)]


def deployment_dict(d: Deployment) -> dict[str, Any]:
    return {"task": d.task_id, "detector": d.detector, "node": d.node.key, "brand": d.brand, "state": d.state,
            "percent": d.percent, "reason": d.reason, "override_by": d.override_by,
            "model_version": _version_ref(d.model_version), "updated_at": d.updated_at}


def task_detail(s: Session, task_id: str) -> dict[str, Any]:
    t = s.get(Task, task_id) if isinstance(task_id, str) else None
    if t is None:
        raise NotFound("task", task_id)
    out = task_dict(t)
    out["events"] = [{"id": e.id, "state": e.state, "reason": e.reason, "details": e.details, "source": e.source,
                      "ts": e.ts} for e in s.scalars(select(TaskEvent).where(TaskEvent.task_id == t.id)
                                                     .order_by(TaskEvent.id))]
    out["epochs"] = epoch_metrics(s, t.id)
    out["points"] = progress_points(s, t.id)
    out["deployments"] = [deployment_dict(d) for d in t.deployments]
    produced = s.scalars(select(ModelVersion).where(ModelVersion.task_id == t.id).order_by(ModelVersion.id))
    out["models"] = [_version_ref(mv) for mv in produced]
    return out


def _active_on(s: Session, mv: ModelVersion) -> list[str]:
    rows = s.scalars(select(DetectorModel).where(DetectorModel.model_version_id == mv.id))
    return sorted(r.node.key for r in rows)


def version_dict(s: Session, mv: ModelVersion) -> dict[str, Any]:
    return {**(_version_ref(mv) or {}), "sha256": mv.sha256, "size": mv.size, "upload_id": mv.upload_id,
            "classes": mv.classes, "input_shape": mv.input_shape, "metrics": mv.metrics,
            "confusion_matrix": mv.confusion_matrix, "gate_reasons": mv.gate_reasons,
            "evaluated_at": mv.evaluated_at, "created_at": mv.created_at,
            "lineage": {"task": mv.task_id, "data_snapshot": mv.data_snapshot, "base_model": mv.base_model,
                        "parent": _version_ref(mv.parent), "training_config": mv.training_config},
            "active_on": _active_on(s, mv)}


def registry(s: Session, *, line: str | None = None, brand: str | None = None,
             gate_state: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    q = select(ModelVersion).order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
    if line:
        q = q.join(Line, ModelVersion.line_id == Line.id).where(Line.key == line)
    if brand:
        q = q.where(ModelVersion.brand == brand)
    if gate_state:
        q = q.where(ModelVersion.gate_state == gate_state)
    return [version_dict(s, mv) for mv in s.scalars(q.limit(max(1, min(limit, 1000))))]


def model_detail(s: Session, version_id: int) -> dict[str, Any]:
    mv = s.get(ModelVersion, version_id) if isinstance(version_id, int) else None
    if mv is None:
        raise NotFound("model version", version_id)
    out = version_dict(s, mv)
    out["evaluation"] = mv.evaluation
    out["manifest"] = mv.manifest
    chain, seen, cur = [], {mv.id}, mv.parent
    while cur is not None and cur.id not in seen:
        chain.append(_version_ref(cur))
        seen.add(cur.id)
        cur = cur.parent
    out["ancestors"] = chain
    out["deployments"] = [deployment_dict(d) for d in s.scalars(
        select(Deployment).where(Deployment.model_version_id == mv.id).order_by(Deployment.id.desc()).limit(100))]
    return out


def changes_since(s: Session, after_id: int = 0, limit: int = 500) -> list[dict[str, Any]]:
    q = select(Change).where(Change.id > after_id).order_by(Change.id).limit(limit)
    return [{"id": c.id, "kind": c.kind, "ref": c.ref, "ts": c.ts} for c in s.scalars(q)]


def latest_change_id(s: Session) -> int:
    return int(s.scalar(select(func.max(Change.id))) or 0)
