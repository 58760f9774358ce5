"""The JSON API with the Flask test client on a real SQLite database: fleet, tasks, models, errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from web_support import (TRAIN_BODY, add_version, app, bearer, client, cloud_config, db_kind,  # noqa: F401 (fixtures)
                         task_row, users)


pytestmark = pytest.mark.parametrize("db_kind", ["sqlite", "postgres"])


def _train(client: FlaskClient, token: str, body: dict[str, Any] | None = None) -> Any:
    return client.post("/api/v1/tasks/train", json=body or TRAIN_BODY, headers=bearer(token))


def test_fleet_lists_sites_lines_nodes_and_brands(client: FlaskClient, users: dict[str, str]) -> None:
    r = client.get("/api/v1/fleet", headers=bearer(users["viewer"]))
    assert r.status_code == 200
    body = r.get_json()
    lines = {ln["key"]: ln for site in body["sites"] for ln in site["lines"]}
    assert set(lines) == {"s1/l1", "s1/l2"}
    assert [d["name"] for d in lines["s1/l1"]["detectors"]] == ["d1", "d2"]
    assert lines["s1/l1"]["edge"]["online"] is False
    assert {b["name"] for b in body["brands"]} == {"brandA", "brandB"}

    r = client.get("/api/v1/lines/s1/l2", headers=bearer(users["viewer"]))
    assert r.status_code == 200 and r.get_json()["detectors"][0]["key"] == "s1/l2/det/d1"
    r = client.get("/api/v1/lines/s1/nope", headers=bearer(users["viewer"]))
    assert r.status_code == 404 and "s1/nope" in r.get_json()["message"]
    assert client.get("/api/v1/brands", headers=bearer(users["viewer"])).get_json()["brands"][0]["name"] == "brandA"


def test_train_task_created_listed_and_detailed(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    r = _train(client, users["engineer"])
    assert r.status_code == 201, r.get_json()
    task = r.get_json()
    assert task["state"] == "QUEUED" and task["kind"] == "train" and task["created_by"] == "engineer"
    assert task["config"]["generators"]["batch_size"] == 8
    assert task_row(app, task["id"]).config["epochs"] == 2          # committed

    listed = client.get("/api/v1/tasks?kind=train", headers=bearer(users["viewer"])).get_json()["tasks"]
    assert [t["id"] for t in listed] == [task["id"]]
    detail = client.get(f"/api/v1/tasks/{task['id']}", headers=bearer(users["viewer"])).get_json()
    assert detail["events"][0]["state"] == "QUEUED"
    assert detail["points"] == [] and detail["epochs"] == []


def test_train_validation_errors_name_each_field(client: FlaskClient, users: dict[str, str]) -> None:
    bad = copy.deepcopy(TRAIN_BODY)
    bad["config"].update({"epochs": 0, "architecture": "resnet", "alpha": 0.5})
    bad["config"]["generators"]["batch_size"] = "many"
    r = _train(client, users["engineer"], bad)
    assert r.status_code == 422
    fields = r.get_json()["fields"]
    assert {"config.epochs", "config.architecture", "config.generators.batch_size"} <= set(fields)
    assert r.get_json()["error"] == "validation_error"

    bad = copy.deepcopy(TRAIN_BODY)
    bad["config"]["alpha"] = 0.5                                  # a model-level rule lands on its field
    assert "config.alpha" in _train(client, users["engineer"], bad).get_json()["fields"]
    bad = copy.deepcopy(TRAIN_BODY)
    bad["config"]["classes"] = ["ok", "rust", "dent"]              # not the brand's classes
    r = _train(client, users["engineer"], bad)
    assert r.status_code == 422 and "config.classes" in r.get_json()["fields"]
    bad = copy.deepcopy(TRAIN_BODY)
    bad["colour"] = "blue"
    assert _train(client, users["engineer"], bad).get_json()["fields"] == {"colour": "Extra inputs are not permitted"}


def test_unknown_names_are_404_naming_them(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    for change, field, name in (({"line": "s1/l9"}, "line", "s1/l9"), ({"brand": "brandZ"}, "brand", "brandZ"),
                                ({"detectors": ["d1", "d7"]}, "detectors.1", "d7"),
                                ({"base_model": 999}, "base_model", "999")):
        r = _train(client, users["engineer"], {**TRAIN_BODY, **change})
        assert r.status_code == 404, (change, r.get_json())
        assert name in r.get_json()["message"] and field in r.get_json()["fields"]
    body = {"line": "s1/l1", "brand": "brandA", "detectors": ["d1"], "model_version": 4242}
    r = client.post("/api/v1/tasks/deploy", json=body, headers=bearer(users["engineer"]))
    assert r.status_code == 404 and "4242" in r.get_json()["message"]
    for path in ("/api/v1/tasks/train-nothing", "/api/v1/models/77", "/api/v1/tasks/..%2F..",
                 f"/api/v1/models/{2**70}", "/api/v1/tasks/%00x"):
        r = client.get(path, headers=bearer(users["viewer"]))
        assert r.status_code == 404 and r.get_json()["error"] == "not_found", path


def test_bad_bodies_and_methods_are_clean_json_errors(client: FlaskClient, users: dict[str, str]) -> None:
    h = bearer(users["engineer"])
    r = client.post("/api/v1/tasks/train", data="{not json", content_type="application/json", headers=h)
    assert r.status_code == 400 and r.get_json()["error"] == "bad_json"
    r = client.post("/api/v1/tasks/train", data="line=s1/l1", content_type="text/plain", headers=h)
    assert r.status_code == 415
    r = client.post("/api/v1/tasks/train", data='{"line": NaN}', content_type="application/json", headers=h)
    assert r.status_code == 400
    r = client.post("/api/v1/tasks/train", json=[1, 2], headers=h)
    assert r.status_code == 422 and r.get_json()["fields"] == {"body": "must be a JSON object"}
    r = client.delete("/api/v1/fleet", headers=h)
    assert r.status_code == 405 and r.get_json()["error"] == "method_not_allowed" and "GET" in r.headers["Allow"]
    r = client.get("/api/v1/tasks?limit=0&colour=red", headers=h)
    assert r.status_code == 422 and {"query.limit", "query.colour"} <= set(r.get_json()["fields"])
    r = client.get("/api/v1/nothing-here", headers=h)
    assert r.status_code == 404 and r.is_json


def test_deploy_gate_override_and_cancel(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    good = add_version(app, version=1)
    rejected = add_version(app, version=2, gate_state="rejected", parent_id=good)
    h = bearer(users["engineer"])
    body = {"line": "s1/l1", "brand": "brandA", "detectors": ["d1", "d2"], "model_version": good, "canary": True}
    r = client.post("/api/v1/tasks/deploy", json=body, headers=h)
    assert r.status_code == 201, r.get_json()
    task = r.get_json()
    assert [d["state"] for d in task["deployments"]] == ["PENDING", "PENDING"]
    assert task["config"]["canary"] is True and task["model_version"]["id"] == good

    r = client.post("/api/v1/tasks/deploy", json={**body, "model_version": rejected}, headers=h)
    assert r.status_code == 422 and "override" in r.get_json()["fields"]
    r = client.post("/api/v1/tasks/deploy", json={**body, "model_version": rejected, "override": True}, headers=h)
    assert r.status_code == 201
    assert {d["override_by"] for d in r.get_json()["deployments"]} == {"engineer"}
    r = client.post("/api/v1/tasks/deploy", json={**body, "brand": "brandB"}, headers=h)
    assert r.status_code == 422 and "model_version" in r.get_json()["fields"]

    r = client.post(f"/api/v1/tasks/{task['id']}/cancel", headers=h)       # no body: allowed
    assert r.status_code == 200 and r.get_json()["state"] == "CANCELED"
    r = client.post(f"/api/v1/tasks/{task['id']}/cancel", json={"reason": "again"}, headers=h)
    assert r.status_code == 409 and r.get_json()["error"] == "conflict"


def test_registry_lists_metrics_gate_lineage(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    base = add_version(app, version=1)
    child = add_version(app, version=2, parent_id=base, gate_state="rejected")
    add_version(app, line="s1/l2", version=1)
    h = bearer(users["viewer"])
    models = client.get("/api/v1/models?line=s1/l1", headers=h).get_json()["models"]
    assert [m["version"] for m in models] == [2, 1]
    assert models[0]["gate_reasons"] == ["accuracy too low"] and models[0]["lineage"]["parent"]["id"] == base
    assert models[0]["confusion_matrix"][0] == [50, 1, 0]
    assert len(client.get("/api/v1/models?gate=approved", headers=h).get_json()["models"]) == 2
    detail = client.get(f"/api/v1/models/{child}", headers=h).get_json()
    assert [a["id"] for a in detail["ancestors"]] == [base] and detail["metrics"]["test_accuracy"] == 0.93
    assert client.get("/api/v1/models?gate=maybe", headers=h).status_code == 422


def test_inputs_no_database_can_store_are_refused(client: FlaskClient, users: dict[str, str]) -> None:
    """NUL characters and ids past 32 bits: clean 4xx on SQLite and PostgreSQL alike (found by the fuzzer)."""
    h = bearer(users["admin"])
    r = client.post("/api/v1/users", json={"username": "a\x00b", "password": "longenough", "role": "viewer"},
                    headers=h)
    assert r.status_code == 422 and r.get_json()["fields"] == {"username": "must not contain NUL characters"}
    r = _train(client, users["engineer"], {**TRAIN_BODY, "detectors": ["d1", "d\x002"]})
    assert r.status_code == 422 and "detectors.1" in r.get_json()["fields"]
    r = client.get("/api/v1/tasks?line=s1%00", headers=h)
    assert r.status_code == 422 and r.get_json()["fields"] == {"line": "must not contain NUL characters"}
    for ref in (2**31, "99999999999"):
        body = {"line": "s1/l1", "brand": "brandA", "detectors": ["d1"], "model_version": ref}
        r = client.post("/api/v1/tasks/deploy", json=body, headers=h)
        assert r.status_code == 404 and "model_version" in r.get_json()["fields"], ref
    assert client.get(f"/api/v1/models/{2**31}", headers=h).status_code == 404
    assert client.patch(f"/api/v1/users/{2**40}", json={}, headers=h).status_code == 404
