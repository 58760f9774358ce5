"""Task endpoints: list, detail, start a training or a deployment, cancel.

A created task is committed before its dispatch is queued, so that a worker always
finds the row it is told about.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from flask import g
from pydantic import BaseModel, ConfigDict, Field

from cloud_app import queries, services
from cloud_app.models import TASK_KINDS, TASK_STATES, Task
from cloud_app.web.api import check_id, db_ref, operation, reply
from cloud_app.web.schemas import (CancelRequest, DeployTaskRequest, TaskDetailOut, TaskListOut, TaskOut,
                                   TrainTaskRequest)
from cloud_app.web.state import db, web_state

log = logging.getLogger(__name__)


class TaskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: Literal[TASK_STATES] | None = None  # type: ignore[valid-type]
    kind: Literal[TASK_KINDS] | None = None  # type: ignore[valid-type]
    line: str | None = Field(default=None, max_length=130, description="'site/line'")
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=1_000_000)


@operation("GET", "/tasks", tag="tasks", summary="Tasks, newest first, with state and progress",
           response=TaskListOut, query=TaskQuery, errors=(422,))
def list_tasks(q: TaskQuery) -> Any:
    rows = queries.list_tasks(db(), state=q.state, kind=q.kind, line=q.line, limit=q.limit, offset=q.offset)
    return reply({"tasks": rows})


@operation("GET", "/tasks/<task_id>", tag="tasks", summary="One task with events, epoch metrics and chart points",
           response=TaskDetailOut, errors=(404,))
def get_task(task_id: str) -> Any:
    return reply(queries.task_detail(db(), check_id(task_id, "task")))


def submit(task: Task) -> dict[str, Any]:
    """Commit the new task, queue its dispatch, and answer with its detail."""
    s = db()
    s.commit()
    web_state().dispatch(task.id)
    log.info("%s task %s created by %s on %s", task.kind, task.id, g.user.username, task.line.key)
    return queries.task_detail(s, task.id)


@operation("POST", "/tasks/train", tag="tasks", summary="Start a training task", body=TrainTaskRequest,
           response=TaskDetailOut, status=201, role="engineer", errors=(404, 422))
def create_train(req: TrainTaskRequest) -> Any:
    """Queue a training on the line's edge with the full training configuration. Unknown line, brand,
    detector or base model: 404 naming it; classes that are not the brand's: 422 on ``config.classes``."""
    task = services.create_train_task(db(), line=req.line, brand=req.brand, detectors=req.detectors,
                                      config=req.config, user=g.user.username,
                                      base_model=db_ref(req.base_model, "model version", "base_model"))
    return reply(submit(task), 201)


@operation("POST", "/tasks/deploy", tag="tasks", summary="Deploy a registry version to detectors",
           body=DeployTaskRequest, response=TaskDetailOut, status=201, role="engineer", errors=(404, 422))
def create_deploy(req: DeployTaskRequest) -> Any:
    """A version the evaluation gate did not approve needs ``override: true``; who overrode it is recorded."""
    task = services.create_deploy_task(db(), line=req.line, brand=req.brand, detectors=req.detectors,
                                       model_version=db_ref(req.model_version, "model version", "model_version"),
                                       user=g.user.username, canary=req.canary,
                                       override=req.override)
    return reply(submit(task), 201)


@operation("POST", "/tasks/<task_id>/cancel", tag="tasks", summary="Cancel a queued or running task",
           body=CancelRequest, body_required=False, response=TaskOut, role="engineer", errors=(404, 409, 422))
def cancel(task_id: str, req: CancelRequest) -> Any:
    """A task the edge has not acknowledged is CANCELED at once; a running one when its edge confirms."""
    return reply(cancel_and_notify(check_id(task_id, "task"), req.reason))


def cancel_and_notify(task_id: str, reason: str) -> dict[str, Any]:
    s = db()
    task, send = services.cancel_task(s, task_id, user=g.user.username, reason=reason)
    s.commit()
    if send:
        web_state().cancel(task.id, reason or f"canceled by {g.user.username}")
    log.info("task %s cancel requested by %s", task.id, g.user.username)
    return queries.task_dict(task)

