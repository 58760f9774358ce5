"""Server-Sent Events: a task's live stream and the change feed, fed through the back end's ingest."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from fabbus.messages import DeploymentProgress, DetectorDeployment, EpochMetrics, TaskState, TaskStatus

from web_support import (TRAIN_BODY, add_version, app, bearer, client, cloud_config, db_kind,  # noqa: F401 (fixtures)
                         edge_says, train_progress, users)


def parse(chunks: Iterator[bytes]) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) from an SSE byte stream; comments and retry lines are skipped."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.decode().splitlines()
                          if ": " in line and not line.startswith(":"))
            if "event" in fields:
                yield fields["event"], json.loads(fields["data"]), fields.get("id")


def _new_train(client: FlaskClient, token: str) -> str:
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY, headers=bearer(token))
    assert r.status_code == 201
    return str(r.get_json()["id"])


def test_task_stream_replays_history_and_ends(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    task = _new_train(client, users["engineer"])
    edge_says(app, TaskStatus(task=task, kind="train", state=TaskState.ACCEPTED))
    for batch in (1, 2, 3, 4):
        edge_says(app, train_progress(task, 1, batch))
    edge_says(app, EpochMetrics(task=task, epoch=1, epochs=2, loss=0.4, accuracy=0.8, val_loss=0.5,
                                val_accuracy=0.75, duration_s=1.5))
    edge_says(app, TaskStatus(task=task, kind="train", state=TaskState.SUCCEEDED))

    with client.get(f"/api/v1/tasks/{task}/events", headers=bearer(users["viewer"]), buffered=False) as r:
        assert r.status_code == 200 and r.mimetype == "text/event-stream"
        events = list(parse(r.response))      # the stream ends by itself: the task is final
    kinds = [e for e, _, _ in events]
    assert kinds[0] == "task" and kinds[-1] == "end" and events[-1][1]["state"] == "SUCCEEDED"
    points = [d for e, d, _ in events if e == "progress"]
    assert [p["batch"] for p in points] == [1, 2, 3, 4]
    assert points[-1]["step"] == 50.0 and points[0]["accuracy"] is not None
    epochs = [d for e, d, _ in events if e == "epoch"]
    assert epochs[0]["val_accuracy"] == 0.75 and epochs[0]["step"] == 1
    assert [d["state"] for e, d, _ in events if e == "status"][:2] == ["QUEUED", "ACCEPTED"]

    last_id = [i for _, _, i in events if i][-1]                 # resume: only what came after
    with client.get(f"/api/v1/tasks/{task}/events", headers={**bearer(users["viewer"]), "Last-Event-ID": last_id},
                    buffered=False) as r:
        again = [e for e, _, _ in parse(r.response)]
    assert again == ["task", "end"]


def test_task_stream_follows_a_running_task(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    task = _new_train(client, users["engineer"])
    seen: list[tuple[str, dict[str, Any]]] = []
    got_task = threading.Event()

    def read() -> None:
        with client.application.test_client() as c, \
                c.get(f"/api/v1/tasks/{task}/events", headers=bearer(users["viewer"]), buffered=False) as r:
            for event, data, _ in parse(r.response):
                seen.append((event, data))
                got_task.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert got_task.wait(5)
    edge_says(app, train_progress(task, 1, 1))
    edge_says(app, TaskStatus(task=task, kind="train", state=TaskState.FAILED, reason="out of memory"))
    reader.join(10)
    assert not reader.is_alive()
    assert ("progress" in [e for e, _ in seen]) and seen[-1] == ("end", {"state": "FAILED"})
    assert any(e == "task" and d["state"] == "FAILED" and d["reason"] == "out of memory" for e, d in seen)


def test_deploy_stream_has_per_detector_progress(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    version = add_version(app)
    body = {"line": "s1/l1", "brand": "brandA", "detectors": ["d1", "d2"], "model_version": version}
    task = client.post("/api/v1/tasks/deploy", json=body, headers=bearer(users["engineer"])).get_json()["id"]
    edge_says(app, DeploymentProgress(task=task, percent=50, detectors={
        "d1": DetectorDeployment(state="ACTIVE", percent=100), "d2": DetectorDeployment(state="LOADING", percent=0)}))
    edge_says(app, TaskStatus(task=task, kind="deploy", state=TaskState.CANCELED))
    with client.get(f"/api/v1/tasks/{task}/events", headers=bearer(users["viewer"]), buffered=False) as r:
        briefs = [d for e, d, _ in parse(r.response) if e == "task"]
    assert {d["detector"]: d["state"] for d in briefs[0]["deployments"]} == {"d1": "ACTIVE", "d2": "LOADING"}


def test_change_feed_sends_task_changes_then_ends(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    h = bearer(users["viewer"])
    with client.get("/api/v1/events", headers=h, buffered=False) as r:
        stream = iter(r.response)
        assert next(stream).startswith(b"retry:")        # connected: the cursor is set
        task = _new_train(client, users["engineer"])
        edge_says(app, train_progress(task, 1, 2))
        events = list(parse(stream))                     # ends after stream_max_s (1 s in tests)
    tasks = [d for e, d, _ in events if e == "task"]
    assert tasks and tasks[-1]["id"] == task and tasks[-1]["percent"] == 25.0
    assert client.get("/api/v1/tasks/nope/events", headers=h).status_code == 404
    assert client.get("/api/v1/events").status_code == 401


def test_idle_stream_sends_keep_alive_comments(client: FlaskClient, users: dict[str, str]) -> None:
    with client.get("/api/v1/events", headers=bearer(users["viewer"]), buffered=False) as r:
        raw = b"".join(r.response)              # 1 s of nothing (stream_max_s), keep-alive every 0.3 s
    assert raw.startswith(b"retry: 2000") and raw.count(b": keep-alive\n\n") >= 2
