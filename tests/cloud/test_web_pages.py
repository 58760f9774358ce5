"""Dashboard pages and forms with the Flask test client (CSRF on, as in production)."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from cloud_app.web.forms import all_fields

from web_support import (add_version, app, client, cloud_config, csrf_token, db_kind, login,  # noqa: F401 (fixtures)
                         task_row, users)


def _form(client: FlaskClient, page: str, **fields: object) -> dict[str, object]:
    return {"csrf_token": csrf_token(client, page), **fields}


def test_every_page_renders_for_a_viewer(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    v = add_version(app)
    login(client, "viewer")
    for page in ("/", "/fleet", "/tasks", "/tasks?state=QUEUED&kind=train", "/models", "/models?line=s1/l1",
                 f"/models/{v}", "/account"):
        r = client.get(page, follow_redirects=True)
        assert r.status_code == 200, page
    html = client.get("/fleet").get_data(as_text=True)
    assert "s1/l1/det/d2" in html and "offline" in html and "Train</a>" not in html   # viewer: no buttons
    html = client.get(f"/models/{v}").get_data(as_text=True)
    assert "Confusion matrix" in html and "approved" in html and "snap-1" in html
    assert client.get("/models/12345").status_code == 404
    assert client.get("/tasks/nope").status_code == 404
    with client.get("/static/chart.js") as r:     # served by the app itself (no CDN)
        assert r.status_code == 200 and b"MiniChart" in r.get_data()


def test_training_form_has_every_config_field(client: FlaskClient, users: dict[str, str]) -> None:
    login(client, "engineer")
    html = client.get("/train?line=s1/l1").get_data(as_text=True)
    names = set(re.findall(r'name="([^"]+)"', html))
    assert {f.name for f in all_fields()} <= names
    assert {"line", "brand", "detectors", "base_model", "generators.class_weights", "fine_tune.enabled",
            "callbacks.early_stopping.patience", "augmentation.rotation", "pretrained.source"} <= names


def test_training_form_shows_a_message_under_each_bad_field(client: FlaskClient, users: dict[str, str]) -> None:
    login(client, "engineer")
    r = client.post("/train", data=_form(client, "/train", line="s1/l1", brand="brandA", detectors=["s1/l1|d1"],
                                         epochs="0", **{"generators.batch_size": "lots",
                                                        "generators.class_weights": "ok:2",
                                                        "augmentation.rotation": "0.9"}))
    assert r.status_code == 422
    html = r.get_data(as_text=True)
    assert 'id="error-generators-class_weights"' in html          # shape error found before pydantic
    r = client.post("/train", data=_form(client, "/train", line="s1/l1", brand="brandA", detectors=["s1/l1|d1"],
                                         epochs="0", **{"generators.batch_size": "lots",
                                                        "augmentation.rotation": "0.9", "alpha": "0.5"}))
    html = r.get_data(as_text=True)
    for name in ("epochs", "generators-batch_size", "augmentation-rotation"):
        assert f'id="error-{name}"' in html, name
    assert "greater than or equal to 1" in html and 'value="lots"' in html       # typed values are kept
    r = client.post("/train", data=_form(client, "/train", line="s1/l1", brand="brandA", detectors=["s1/l1|d1"],
                                         alpha="0.5"))
    assert 'id="error-alpha"' in r.get_data(as_text=True)                    # a model-level rule, on its field
    r = client.post("/train", data=_form(client, "/train", line="s1/l9", brand="brandA"))
    assert r.status_code == 422 and "unknown line" in r.get_data(as_text=True)
    r = client.post("/train", data=_form(client, "/train", line="s1/l1", brand="brandA"))
    assert 'id="error-detectors"' in r.get_data(as_text=True)


def test_training_form_starts_a_task(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    login(client, "engineer")
    data = _form(client, "/train", line="s1/l1", brand="brandA", detectors=["s1/l1|d1", "s1/l2|d1"],
                 classes="", epochs="3", architecture="mobilenet_v2", alpha="0.35",
                 **{"generators.batch_size": "8", "generators.class_weights": "ok=1, scratch=2.5",
                    "augmentation.horizontal_flip": "on", "fine_tune.enabled": "on", "fine_tune.epochs": "1"})
    r = client.post("/train", data=data)
    assert r.status_code == 302, r.get_data(as_text=True)
    task_id = r.headers["Location"].rsplit("/", 1)[1]
    task = task_row(app, task_id)
    assert task.detectors == ["d1"] and task.created_by == "engineer"
    cfg = task.config
    assert cfg["classes"] == ["ok", "scratch", "dent"] and cfg["alpha"] == 0.35
    assert cfg["generators"]["class_weights"] == {"ok": 1.0, "scratch": 2.5}
    assert cfg["augmentation"]["horizontal_flip"] is True and cfg["generators"]["shuffle"] is False
    assert cfg["fine_tune"] == {**cfg["fine_tune"], "enabled": True, "epochs": 1}
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "chart-batch" in html and "Cancel task" in html
    r = client.post(f"/tasks/{task_id}/cancel", data=_form(client, "/fleet"))
    assert r.status_code == 302 and task_row(app, task_id).state == "CANCELED"
    r = client.post(f"/tasks/{task_id}/cancel", data=_form(client, "/fleet"), follow_redirects=True)
    assert "Cannot cancel" in r.get_data(as_text=True)


def test_deploy_form(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    ok = add_version(app, version=1)
    bad = add_version(app, version=2, gate_state="rejected")
    login(client, "engineer")
    html = client.get(f"/deploy?version={ok}").get_data(as_text=True)
    assert f'value="{ok}" data-line="s1/l1" data-brand="brandA" data-gate="approved" selected' in html
    form = {"line": "s1/l1", "brand": "brandA", "model_version": str(bad), "detectors": ["s1/l1|d2"]}
    r = client.post("/deploy", data=_form(client, "/deploy", **form))
    assert r.status_code == 422 and 'id="error-override"' in r.get_data(as_text=True)
    r = client.post("/deploy", data=_form(client, "/deploy", **form, override="on", canary="on"))
    assert r.status_code == 302
    task = task_row(app, r.headers["Location"].rsplit("/", 1)[1])
    assert task.kind == "deploy" and task.detectors == ["d2"] and task.config["canary"] is True
    html = client.get(r.headers["Location"]).get_data(as_text=True)
    assert 'data-detector="d2"' in html and "override by engineer" in html
    r = client.post("/deploy", data=_form(client, "/deploy", line="s1/l1", brand="brandA", model_version="nope",
                                          detectors=["s1/l1|d1"]))
    assert r.status_code == 422 and 'id="error-model_version"' in r.get_data(as_text=True)


def test_users_and_tokens_pages(client: FlaskClient, users: dict[str, str]) -> None:
    login(client, "admin")
    r = client.post("/users", data=_form(client, "/users", username="dave", password="short", role="viewer"))
    assert r.status_code == 422 and 'id="error-password"' in r.get_data(as_text=True)
    r = client.post("/users", data=_form(client, "/users", username="dave", password="long enough", role="viewer"),
                    follow_redirects=True)
    assert "User dave created" in r.get_data(as_text=True)
    r = client.post("/account/tokens", data=_form(client, "/account", name="laptop"))
    token = re.search(r'id="new-token">([^<]+)<', r.get_data(as_text=True))
    assert token and token.group(1).startswith("fab_")
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token.group(1)}"}).status_code == 200
