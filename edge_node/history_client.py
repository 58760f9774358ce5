"""An HTTP client of one detector's history server (detector_node.history_server), on the plant network.

    client = HistoryClient("d1", link, timeout_s=10)
    samples, next_cursor = client.list(cursor=0, limit=500, brand="acme", label="scratch")
    data = client.download(samples[0])      # PNG bytes, or None when the detector has cleaned it up
    client.close()

One keep-alive connection per detector (http.client): a sync of thousands of samples
opens one TCP connection, not thousands. A kept-alive connection the server closed
meanwhile is reopened once. Everything that goes wrong becomes a CollectionError
whose message names the detector and what it did: unreachable, refused the token,
answered an HTTP error, or answered something that is not a valid listing.
"""

from __future__ import annotations

import http.client
import json
import logging
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from edge_node.config import DetectorLink
from edge_node.tasks import TaskFailed

log = logging.getLogger(__name__)

_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class CollectionError(TaskFailed):
    """A detector's history could not be collected; the message says which and why."""


class _Garbage(Exception):
    """A listing that is not what the history server's protocol says."""


@dataclass(frozen=True)
class RemoteSample:
    cursor: int
    id: str
    brand: str
    label: str
    sha256: str
    size: int


class HistoryClient:
    def __init__(self, detector: str, link: DetectorLink, timeout_s: float) -> None:
        self.detector, self.url, self.timeout_s = detector, link.url, timeout_s
        self._link = link
        parts = urlsplit(link.url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port
        self._conn: http.client.HTTPConnection | None = None
        self.stats = {"requests": 0, "connections": 0, "bytes": 0}

    # ---- the two requests

    def list(self, cursor: int, limit: int, brand: str, label: str) -> tuple[list[RemoteSample], int]:
        """Samples of ``brand`` labelled ``label`` after ``cursor``, oldest first, and the next cursor."""
        path = "/v1/samples?" + urlencode({"cursor": cursor, "limit": limit, "brand": brand, "labels": label})
        status, body = self._get(path)
        if status != 200:
            raise self._http_error(status, path, body)
        try:
            return _parse_listing(body, cursor, brand, label)
        except _Garbage as exc:
            raise CollectionError(f"detector {self.detector} answered garbage to GET {path}: {exc}") from None

    def download(self, sample: RemoteSample) -> bytes | None:
        """The sample's bytes as sent (the caller checks the sha256); None when the detector no longer has it."""
        path = f"/v1/samples/{sample.id}"
        status, body = self._get(path)
        if status == 404:
            return None
        if status != 200:
            raise self._http_error(status, path, body)
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- HTTP

    def _connect(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        self._conn = cls(self._host, self._port, timeout=self.timeout_s)
        self.stats["connections"] += 1
        return self._conn

    def _get(self, path: str) -> tuple[int, bytes]:
        token = self._link.resolved_token()
        if token is None:
            raise CollectionError(f"no history token for detector {self.detector}: environment variable "
                                  f"{self._link.token_env} is not set")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, image/png"}
        for attempt in (1, 2):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
            except (http.client.HTTPException, OSError) as exc:
                self.close()
                if reused and attempt == 1:  # the server closed the idle kept-alive connection: reopen once
                    log.debug("detector %s: reopening the connection after %r", self.detector, exc)
                    continue
                raise CollectionError(f"detector {self.detector} at {self.url} is unreachable: "
                                      f"{exc or type(exc).__name__}") from None
            self.stats["requests"] += 1
            self.stats["bytes"] += len(body)
            if response.will_close:
                self.close()
            return response.status, body
        raise AssertionError("unreachable")  # pragma: no cover

    def _http_error(self, status: int, path: str, body: bytes) -> CollectionError:
        if status == 401:
            return CollectionError(f"detector {self.detector} refused the edge's history token (HTTP 401); "
                                   f"check {self._link.token_env}")
        text = body[:200].decode("utf-8", "replace")
        return CollectionError(f"detector {self.detector} answered HTTP {status} to GET {path}: {text}")


def _parse_listing(body: bytes, cursor: int, brand: str, label: str) -> tuple[list[RemoteSample], int]:
    """The listing, strictly checked; _Garbage saying what is wrong."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Garbage(f"not JSON ({exc}): {body[:80]!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("samples"), list):
        raise _Garbage("no 'samples' list")
    next_cursor = data.get("next_cursor")
    if not isinstance(next_cursor, int) or isinstance(next_cursor, bool) or next_cursor < cursor:
        raise _Garbage(f"next_cursor {next_cursor!r} is not an integer >= {cursor}")
    samples, last = [], cursor
    for i, raw in enumerate(data["samples"]):
        try:
            s = RemoteSample(cursor=raw["cursor"], id=raw["id"], brand=raw["brand"], label=raw["label"],
                             sha256=raw["sha256"], size=raw["size"])
        except (TypeError, KeyError) as exc:
            raise _Garbage(f"sample {i} lacks {exc}") from None
        if not isinstance(s.cursor, int) or s.cursor <= last:
            raise _Garbage(f"sample {i}: cursor {s.cursor!r} does not follow {last}")
        if not isinstance(s.id, str) or not _ID_RE.match(s.id):
            raise _Garbage(f"sample {i}: id {str(s.id)[:40]!r} is not 32 hex digits")
        if not isinstance(s.sha256, str) or not _SHA_RE.match(s.sha256):
            raise _Garbage(f"sample {i}: sha256 {str(s.sha256)[:80]!r} is not 64 hex digits")
        if not isinstance(s.size, int) or s.size < 1:
            raise _Garbage(f"sample {i}: size {s.size!r} is not a positive integer")
        if s.brand != brand or s.label != label:
            raise _Garbage(f"sample {i} is {s.brand}/{s.label}, the edge asked for {brand}/{label}")
        samples.append(s)
        last = s.cursor
    if samples and next_cursor != last:
        raise _Garbage(f"next_cursor {next_cursor} is not the last sample's cursor {last}")
    return samples, next_cursor
