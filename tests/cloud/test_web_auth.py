"""Login, sessions, roles, API tokens and CSRF."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from web_support import (PASSWORD, TRAIN_BODY, app, bearer, client, cloud_config, csrf_token,  # noqa: F401 (fixtures)
                         db_kind, login, users)


def test_pages_redirect_to_login_and_api_answers_401(client: FlaskClient, users: dict[str, str]) -> None:
    r = client.get("/tasks?kind=train")
    assert r.status_code == 302 and r.headers["Location"].startswith("/login?next=")
    r = client.get("/api/v1/tasks")
    assert r.status_code == 401 and r.get_json()["error"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY)      # 401 before any CSRF check
    assert r.status_code == 401
    assert client.get("/api/v1/fleet", headers=bearer("fab_not-a-token")).status_code == 401
    assert client.get("/api/v1/fleet", headers={"Authorization": "Bearer "}).status_code == 401


def test_login_logout_and_next(client: FlaskClient, users: dict[str, str]) -> None:
    r = login(client, "viewer", "wrong password")
    assert r.status_code == 401 and "Wrong username or password" in r.get_data(as_text=True)
    token = csrf_token(client)
    r = client.post("/login?next=/models", data={"username": "viewer", "password": PASSWORD, "csrf_token": token})
    assert r.status_code == 302 and r.headers["Location"] == "/models"
    assert client.get("/api/v1/me").get_json()["username"] == "viewer"        # the session works for the API
    token = csrf_token(client, "/fleet")
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/api/v1/me").status_code == 401
    token = csrf_token(client)
    r = client.post("/login?next=//evil.example/x", data={"username": "viewer", "password": PASSWORD,
                                                         "csrf_token": token})
    assert r.headers["Location"] == "/fleet"                                   # no open redirect


def test_csrf_is_required_for_session_posts_not_for_tokens(client: FlaskClient, users: dict[str, str]) -> None:
    r = client.post("/login", data={"username": "engineer", "password": PASSWORD})
    assert r.status_code == 400 and "CSRF" in r.get_data(as_text=True)
    login(client, "engineer")
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY)
    assert r.status_code == 400 and r.get_json()["error"] == "csrf_failed"
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY, headers={"X-CSRFToken": csrf_token(client, "/fleet")})
    assert r.status_code == 201
    with client.application.test_client() as fresh:   # a bearer token needs no CSRF token
        assert fresh.post("/api/v1/tasks/train", json=TRAIN_BODY, headers=bearer(users["engineer"])).status_code == 201


def test_roles(client: FlaskClient, users: dict[str, str]) -> None:
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY, headers=bearer(users["viewer"]))
    assert r.status_code == 403 and "engineer" in r.get_json()["message"]
    r = client.get("/api/v1/users", headers=bearer(users["engineer"]))
    assert r.status_code == 403
    r = client.post("/api/v1/users", json={"username": "x", "password": "12345678", "role": "viewer"},
                    headers=bearer(users["engineer"]))
    assert r.status_code == 403
    login(client, "viewer")
    assert client.get("/train").status_code == 403
    assert client.get("/users").status_code == 403
    assert client.get("/tasks").status_code == 200


def test_user_and_token_management(app: Flask, client: FlaskClient, users: dict[str, str]) -> None:
    admin = bearer(users["admin"])
    r = client.post("/api/v1/users", json={"username": "carol", "password": "short", "role": "chief"}, headers=admin)
    assert r.status_code == 422 and {"password", "role"} <= set(r.get_json()["fields"])
    r = client.post("/api/v1/users", json={"username": "carol", "password": "longenough", "role": "viewer"},
                    headers=admin)
    assert r.status_code == 201
    carol = r.get_json()["id"]
    r = client.post("/api/v1/users", json={"username": "carol", "password": "longenough", "role": "viewer"},
                    headers=admin)
    assert r.status_code == 409
    assert client.patch(f"/api/v1/users/{carol}", json={"role": "engineer"}, headers=admin).get_json()["role"] \
        == "engineer"
    me = client.get("/api/v1/me", headers=admin).get_json()
    r = client.patch(f"/api/v1/users/{me['id']}", json={"active": False}, headers=admin)
    assert r.status_code == 409                                    # the last admin stays
    assert client.patch("/api/v1/users/999", json={}, headers=admin).status_code == 404

    r = client.post("/api/v1/tokens", json={"name": "ci"}, headers=bearer(users["viewer"]))
    assert r.status_code == 201
    new = r.get_json()
    assert new["token"].startswith("fab_")
    assert client.get("/api/v1/me", headers=bearer(new["token"])).get_json()["username"] == "viewer"
    listed = client.get("/api/v1/tokens", headers=bearer(new["token"])).get_json()["tokens"]
    assert "token" not in listed[0] and len(listed) == 2
    assert client.delete(f"/api/v1/tokens/{new['id']}", headers=bearer(users["engineer"])).status_code == 404
    assert client.delete(f"/api/v1/tokens/{new['id']}", headers=bearer(users["viewer"])).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(new["token"])).status_code == 401
    # a disabled user's token stops working, and so does their session
    login(client, "viewer")
    viewer_id = next(u["id"] for u in client.get("/api/v1/users", headers=admin).get_json()["users"]
                     if u["username"] == "viewer")
    client.patch(f"/api/v1/users/{viewer_id}", json={"active": False}, headers=admin)
    assert client.get("/api/v1/me", headers=bearer(users["viewer"])).status_code == 401
    assert client.get("/api/v1/me").status_code == 401


def test_token_use_is_recorded_without_writing_in_reads(app: Flask, client: FlaskClient,
                                                        users: dict[str, str]) -> None:
    h = bearer(users["viewer"])
    assert client.get("/api/v1/tokens", headers=h).get_json()["tokens"][0]["last_used_at"] is None
    later = client.get("/api/v1/tokens", headers=h).get_json()["tokens"][0]["last_used_at"]
    assert later is not None                                  # written after the first request ended
    r = client.post("/api/v1/tasks/train", json=TRAIN_BODY, headers=bearer(users["engineer"]))
    assert r.status_code == 201                               # a writer request: no lock left behind
