"""A small client of the cloud's REST API (/api/v1), as any script would use it.

    token = login_and_create_token("http://127.0.0.1:8080", "admin", password, name="scenario")
    api = CloudApi("http://127.0.0.1:8080", token)
    api.get("/fleet")
    task = api.post("/tasks/train", {"line": "plant1/line1", ...})
    api.node("plant1/line1/det/cam1")          # a node of GET /fleet by key, or None

The first token needs a login: the dashboard's login form (session cookie and CSRF
token), then POST /api/v1/tokens with the CSRF header. Later calls use
``Authorization: Bearer <token>`` only.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT = 30.0
_CSRF_INPUT = re.compile(r'name="csrf_token"\s+value="([^"]+)"')
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


class ApiError(RuntimeError):
    """A non-2xx answer (``status``, the server's ``body``), or the server unreachable (status 0)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.body = status, body


def _open(opener: urllib.request.OpenerDirector, req: urllib.request.Request) -> tuple[int, bytes]:
    try:
        with opener.open(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(0, f"{req.full_url}: {getattr(exc, 'reason', exc)}") from None


def login_and_create_token(base_url: str, username: str, password: str, name: str = "demo") -> str:
    """Log in through the login form and create an API token for that user; the token."""
    base = base_url.rstrip("/")
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    status, page = _open(opener, urllib.request.Request(f"{base}/login"))
    match = _CSRF_INPUT.search(page.decode("utf-8", "replace"))
    if status != 200 or not match:
        raise ApiError(status, f"{base}/login: no login form")
    form = urllib.parse.urlencode({"username": username, "password": password, "csrf_token": match.group(1)})
    status, _ = _open(opener, urllib.request.Request(f"{base}/login", data=form.encode(), method="POST",
                                                     headers={"Content-Type": "application/x-www-form-urlencoded"}))
    if status != 200:
        raise ApiError(status, f"login as {username!r} failed")
    status, page = _open(opener, urllib.request.Request(f"{base}/account"))
    match = _CSRF_META.search(page.decode("utf-8", "replace"))
    if status != 200 or not match:
        raise ApiError(status, f"{base}/account: no CSRF token after login")
    req = urllib.request.Request(f"{base}/api/v1/tokens", data=json.dumps({"name": name}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-CSRFToken": match.group(1)})
    status, body = _open(opener, req)
    if status != 201:
        raise ApiError(status, f"creating an API token failed: {body[:300]!r}")
    return str(json.loads(body)["token"])


class CloudApi:
    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self._opener = urllib.request.build_opener()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(f"{self.base}/api/v1{path}", data=data, method=method, headers=headers)
        status, raw = _open(self._opener, req)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw[:300].decode("utf-8", "replace")
        if not 200 <= status < 300:
            message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
            fields = payload.get("fields") if isinstance(payload, dict) else None
            raise ApiError(status, f"{method} {path}: {message}{f' {fields}' if fields else ''}", payload)
        return payload

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """Every edge and detector of GET /fleet by key (``site/line`` or ``site/line/det/<det>``... as listed)."""
        out: dict[str, dict[str, Any]] = {}
        for site in self.get("/fleet")["sites"]:
            for line in site["lines"]:
                for node in ([line["edge"]] if line.get("edge") else []) + list(line.get("detectors", [])):
                    out[node["key"]] = node
        return out

    def node(self, key: str) -> dict[str, Any] | None:
        return self.nodes().get(key)
