"""Fixtures and helpers of the web-layer tests (Flask tutorial style: ``app``, ``client``).

    from web_support import *   # noqa: F403  (fixtures: cloud_config, app, client, users, ...)

The app runs on a real SQLite database in tmp_path (migrated by Alembic), with the
fleet s1/l1 (d1, d2) and s1/l2 (d1), and brands brandA (ok, scratch, dent) and brandB.
Parametrize ``db_kind`` with "postgres" to run on a fresh PostgreSQL database (and Redis
queue) from the back end's test support (``Stack``; $FAB_TEST_PG, $FAB_TEST_REDIS).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fabbus.inbound import ReceivedMessage
from fabbus.messages import (Body, DeploymentProgress, EpochMetrics, TaskStatus, TrainingProgress, decode,
                             encode)

from backend_support import Stack
from cloud_app.config import CloudConfig
from cloud_app.fleet import find_line
from cloud_app.models import ModelVersion, Task
from cloud_app.users import create_api_token, create_user
from cloud_app.web import close_app, create_app

PASSWORD = "correct horse battery"
ROLES = ("admin", "engineer", "viewer")
FLEET = {
    "sites": {"s1": {"title": "Site 1", "lines": {"l1": {"title": "Line 1", "detectors": ["d1", "d2"]},
                                                  "l2": {"detectors": ["d1"]}}}},
    "brands": {"brandA": {"classes": ["ok", "scratch", "dent"]}, "brandB": {"classes": ["good", "bad"]}},
}
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"|name="csrf-token" content="([^"]+)"')


def make_config(tmp_path: Path, stack: Stack | None = None, **web: Any) -> CloudConfig:
    cfg = CloudConfig.model_validate({
        "database_url": stack.database_url if stack else f"sqlite:///{tmp_path / 'cloud.db'}",
        "huey": stack.huey.model_dump() if stack else {"sqlite_path": str(tmp_path / "huey.db")},
        "model_store": str(tmp_path / "models"),
        "fleet": FLEET,
        "web": {"event_poll_s": 0.05, "options": {"keepalive_s": 0.3, "stream_max_s": 1.0}, **web},
    })
    return cfg.resolve(tmp_path)


@pytest.fixture
def db_kind() -> str:
    """sqlite; a test module parametrizes it with "postgres" too."""
    return "sqlite"


@pytest.fixture
def cloud_config(tmp_path: Path, db_kind: str) -> Iterator[CloudConfig]:
    stack = Stack.create(db_kind, tmp_path)
    try:
        yield make_config(tmp_path, stack)
    finally:
        stack.drop()


@pytest.fixture
def app(cloud_config: CloudConfig) -> Iterator[Flask]:
    app = create_app({"TESTING": True, "CLOUD_CONFIG": cloud_config, "SECRET_KEY": "test-secret"})
    yield app
    close_app(app)


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    with app.test_client() as c:
        yield c


@pytest.fixture
def users(app: Flask) -> dict[str, str]:
    """One user per role (username = role, password PASSWORD); role -> API token."""
    return add_users(app)


def add_users(app: Flask) -> dict[str, str]:
    tokens = {}
    with app.extensions["fab"].db.session() as s:
        for role in ROLES:
            user = create_user(s, role, PASSWORD, role)
            tokens[role] = create_api_token(s, user, "tests")
    return tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf_token(client: FlaskClient, page: str = "/login") -> str:
    html = client.get(page).get_data(as_text=True)
    m = _CSRF.search(html)
    assert m, f"no CSRF token on {page}"
    return m.group(1) or m.group(2)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> Any:
    token = csrf_token(client)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


def add_version(app: Flask, *, line: str = "s1/l1", brand: str = "brandA", version: int = 1,
                gate_state: str = "approved", task_id: str | None = None, parent_id: int | None = None,
                accuracy: float = 0.93) -> int:
    """A registry version row (the file itself is not needed by the web layer)."""
    sha = hashlib.sha256(f"{line}/{brand}/{version}".encode()).hexdigest()
    with app.extensions["fab"].db.session() as s:
        ln = find_line(s, line)
        mv = ModelVersion(line_id=ln.id, brand=brand, version=version, sha256=sha, size=1234,
                          path=f"{sha[:2]}/{sha}.bundle", upload_id=sha, task_id=task_id, parent_id=parent_id,
                          base_model=None, data_snapshot="snap-1", classes=["ok", "scratch", "dent"],
                          input_shape=[1, 64, 64, 3], metrics={"test_accuracy": accuracy, "test_loss": 0.2},
                          confusion_matrix=[[50, 1, 0], [2, 40, 1], [0, 3, 30]],
                          training_config={"epochs": 2}, manifest={}, gate_state=gate_state,
                          gate_reasons=[] if gate_state == "approved" else ["accuracy too low"],
                          evaluation={"checks": [{"name": "integrity", "passed": True, "detail": "sha256 ok"}]})
        s.add(mv)
        s.flush()
        return mv.id


def task_row(app: Flask, task_id: str) -> Task:
    with app.extensions["fab"].db.session(readonly=True) as s:
        task = s.get(Task, task_id)
        assert task is not None
        s.expunge(task)
        return task


TRAIN_BODY: dict[str, Any] = {
    "line": "s1/l1", "brand": "brandA", "detectors": ["d1", "d2"],
    "config": {"classes": ["ok", "scratch", "dent"], "epochs": 2, "input_size": 32,
               "generators": {"batch_size": 8, "validation_split": 0.25, "seed": 7}},
}


def edge_says(app: Flask, body: Body, *, site: str = "s1", line: str = "l1") -> None:
    """Persist a message from the line's edge through the back end's ingest (as the listener does)."""
    from cloud_app import ingest

    topic, handler = {TaskStatus: ("task_status", ingest.on_task_status),
                      TrainingProgress: ("task_progress", ingest.on_task_progress),
                      DeploymentProgress: ("task_progress", ingest.on_task_progress),
                      EpochMetrics: ("task_metrics", ingest.on_epoch_metrics)}[type(body)]
    msg = decode(encode(body, sender=f"{site}/{line}", correlation_id=getattr(body, "task", None)))
    rm = ReceivedMessage(topic_name=topic, ids={"site": site, "line": line, "task": getattr(body, "task", "")},
                         message=msg, topic=f"fab/v1/{site}/{line}/edge/task/x/{topic}", qos=1, retain=False)
    with app.extensions["fab"].db.session() as s:
        handler(s, rm)


def train_progress(task: str, epoch: int, batch: int, *, epochs: int = 2, batches: int = 4, **kw: Any) -> Body:
    done = (epoch - 1) * batches + batch
    return TrainingProgress(task=task, epoch=epoch, epochs=epochs, batch=batch, batches=batches,
                            percent=100.0 * done / (epochs * batches), accuracy=0.5 + 0.05 * done,
                            loss=1.0 / (1 + done), **kw)
