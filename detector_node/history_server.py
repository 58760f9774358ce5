"""Serves the station's image history to its line's edge over HTTP on the plant network.

Every request needs ``Authorization: Bearer <token>`` with one of the configured edge
tokens (compared in constant time); otherwise 401.

``GET /v1/samples?cursor=N&limit=M&brand=B&labels=a,b``
    Samples with a cursor above N (default 0), oldest first, at most M (1..1000,
    default 100), optionally of one brand and of some labels::

        {"samples": [{"cursor": 7, "id": "3f0c...", "brand": "brandA", "label": "scratch",
                      "verdict": "NG", "size": 5321, "sha256": "9a1e...", "time": 1764312000.1}],
         "next_cursor": 7}

    An edge syncs incrementally by asking again from ``next_cursor`` until
    ``samples`` is empty. Unknown or malformed parameters: 400.

``GET /v1/samples/<id>``
    The PNG bytes, with ``ETag: "<sha256>"`` and ``X-Content-SHA256: <sha256>``
    (``If-None-Match`` gives 304). Unknown id (never stored or cleaned up): 404;
    an id that is not 32 hex digits, or a path with ``..``: 400.

Errors are JSON: ``{"error": "<reason>"}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from detector_node.errors import HistoryError, SampleNotFound
from detector_node.history import MAX_LIST, History

log = logging.getLogger(__name__)
_PARAMS = {"cursor", "limit", "brand", "labels"}


class HistoryServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(default="127.0.0.1", description="address on the plant network; 0.0.0.0 for all")
    port: int = Field(default=8750, ge=0, le=65535, description="0: any free port (see HistoryServer.port)")
    tokens: list[SecretStr] = Field(min_length=1, description="bearer tokens of the edges allowed to read")
    request_timeout_s: float = Field(default=30.0, gt=0, description="idle connections are closed after this")

    @field_validator("tokens")
    @classmethod
    def _strong(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        if any(len(t.get_secret_value()) < 16 for t in tokens):
            raise ValueError("each token must have at least 16 characters")
        return tokens


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    history: History
    token_digests: list[bytes]
    request_timeout: float

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (socketserver's signature)
        log.exception("history server: error while serving %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _BadRequest(Exception):
    pass


def _int_param(name: str, text: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdecimal() or len(text) > 19 or not low <= int(text) <= high:
        raise _BadRequest(f"{name} must be an integer in {low}..{high}")
    return int(text)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "fab-detector-history/1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stall per response

    def setup(self) -> None:
        self.timeout = self.server.request_timeout
        super().setup()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        log.debug("history server: %s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        try:  # boundary: one HTTP request
            self._get()
        except _BadRequest as exc:
            self._json(400, {"error": str(exc)})
        except (BrokenPipeError, ConnectionResetError):
            log.debug("history server: %s went away", self.address_string())
        except Exception:
            log.exception("history server: GET %s failed", self.path[:200])
            self._json(500, {"error": "internal error"})
            self.close_connection = True

    def _authorized(self) -> bool:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        given = _digest(token.strip())
        ok = False
        for expected in self.server.token_digests:  # no early exit: the time does not depend on which one matches
            ok |= hmac.compare_digest(given, expected)
        return ok and scheme.lower() == "bearer"

    def _get(self) -> None:
        if not self._authorized():
            log.warning("history server: unauthorized request from %s", self.address_string())
            challenge = {"WWW-Authenticate": 'Bearer realm="history"'}
            self._json(401, {"error": "missing or invalid bearer token"}, challenge)
            return
        url = urlsplit(self.path)
        path = unquote(url.path)
        parts = path.split("/")
        if any(p in ("..", ".") for p in parts) or "\\" in path or "\0" in path:
            log.warning("history server: path traversal refused from %s: %r", self.address_string(), path[:200])
            raise _BadRequest("path traversal refused")
        if path == "/v1/samples":
            self._list(url.query)
        elif len(parts) == 4 and path.startswith("/v1/samples/"):
            self._sample(parts[3])
        else:
            self._json(404, {"error": "no such resource"})

    def _list(self, query: str) -> None:
        params: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key not in _PARAMS or key in params:
                raise _BadRequest(f"unknown or repeated parameter {key[:40]!r}")
            params[key] = value
        cursor = _int_param("cursor", params.get("cursor", "0"), 0, 2**63 - 1)
        limit = _int_param("limit", params.get("limit", "100"), 1, MAX_LIST)
        labels = [x for x in params["labels"].split(",") if x] if "labels" in params else None
        try:
            samples, next_cursor = self.server.history.list(cursor, limit, params.get("brand"), labels)
        except HistoryError as exc:
            raise _BadRequest(str(exc)) from None
        self._json(200, {"samples": [s.to_json() for s in samples], "next_cursor": next_cursor})

    def _sample(self, sample_id: str) -> None:
        try:
            sample, f = self.server.history.open(sample_id)
        except SampleNotFound:
            self._json(404, {"error": "no such sample"})
            return
        except HistoryError as exc:
            raise _BadRequest(str(exc)) from None
        with f:
            etag = f'"{sample.sha256}"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(sample.size))
            self.send_header("ETag", etag)
            self.send_header("X-Content-SHA256", sample.sha256)
            self.send_header("Cache-Control", "private, max-age=31536000, immutable")
            self.end_headers()
            shutil.copyfileobj(f, self.wfile)

    def _json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


class HistoryServer:
    """Binds on construction (``port`` is then known); serves in a thread from :meth:`start` to :meth:`close`."""

    def __init__(self, history: History, config: HistoryServerConfig) -> None:
        cls = _Server6 if ":" in config.host else _Server
        self._httpd = cls((config.host, config.port), _Handler)
        self._httpd.history = history
        self._httpd.token_digests = [_digest(t.get_secret_value()) for t in config.tokens]
        self._httpd.request_timeout = config.request_timeout_s
        self.host = config.host
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="history-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HistoryServer:
        self._thread.start()
        log.info("history server on %s", self.url)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> HistoryServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
