"""Dashboard pages that show: fleet, tasks, one task, the model registry, one model version.

The forms (train, deploy, cancel) are in pages_forms, users and tokens in pages_admin;
all share this blueprint.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, render_template, request

from cloud_app import queries
from cloud_app.models import TASK_KINDS, TASK_STATES
from cloud_app.web.api import MAX_DB_INT, check_id
from cloud_app.web.auth import login_required
from cloud_app.web.errors import not_found
from cloud_app.web.state import db

bp = Blueprint("pages", __name__)
ACTIVE = ("QUEUED", "ACCEPTED", "IN_PROGRESS")


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    if not ts:
        return "—"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("ago")
def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    secs = max(0, int(dt.datetime.now().timestamp() - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if secs >= size:
            return f"{secs // size} {unit} ago"
    return f"{secs} s ago"


@bp.app_template_filter("metric")
def metric(value: Any, digits: int = 3) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}"
    return "—" if value is None else str(value)


@bp.app_template_filter("short")
def short(sha: str | None) -> str:
    return (sha or "")[:10]


def accuracy(version: dict[str, Any]) -> float | None:
    m = version.get("metrics") or {}
    for key in ("test_accuracy", "accuracy", "val_accuracy"):
        if isinstance(m.get(key), (int, float)):
            return float(m[key])
    return None


@bp.get("/fleet")
@login_required
def fleet() -> str:
    s = db()
    return render_template("fleet.html", sites=queries.fleet(s), brands=queries.brands(s))


@bp.get("/tasks")
@login_required
def tasks() -> str:
    state = request.args.get("state") if request.args.get("state") in TASK_STATES else None
    kind = request.args.get("kind") if request.args.get("kind") in TASK_KINDS else None
    rows = queries.list_tasks(db(), state=state, kind=kind, limit=200)
    return render_template("tasks.html", tasks=rows, state=state, kind=kind, states=TASK_STATES, kinds=TASK_KINDS)


@bp.get("/tasks/<task_id>")
@login_required
def task(task_id: str) -> str:
    detail = queries.task_detail(db(), check_id(task_id, "task"))
    return render_template("task.html", task=detail, active=detail["state"] in ACTIVE)


@bp.get("/models")
@login_required
def models() -> str:
    s = db()
    line = request.args.get("line") or None
    brand = request.args.get("brand") or None
    rows = queries.registry(s, line=line, brand=brand)
    lines = [ln["key"] for site in queries.fleet(s) for ln in site["lines"]]
    return render_template("models.html", models=rows, line=line, brand=brand, lines=lines,
                           brands=[b["name"] for b in queries.brands(s)], accuracy=accuracy)


@bp.get("/models/<int:version_id>")
@login_required
def model(version_id: int) -> str:
    if version_id > MAX_DB_INT:
        raise not_found("model version", version_id)
    detail = queries.model_detail(db(), version_id)
    return render_template("model.html", m=detail, accuracy=accuracy(detail))
