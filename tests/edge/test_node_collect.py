"""Data collection over HTTP from real detector history servers: incremental, verified, precise failures."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from node_support import BRAND, CLASSES, TOKEN, fill_history

from broker.harness import free_port
from detector_node.history import History, HistoryConfig
from detector_node.history_server import HistoryServer, HistoryServerConfig
from edge_node.collector import Collector
from edge_node.config import (
    BrandSection,
    CollectionConfig,
    DetectorLink,
    EdgeConfig,
    EdgeIds,
)
from edge_node.dataset import DatasetCache
from edge_node.history_client import CollectionError
from fabbus.messages import CollectionProgress


class CorruptingHistory(History):
    """Serves flipped bytes for the first ``bad`` downloads of each sample."""

    def __init__(self, config: HistoryConfig, bad: int) -> None:
        super().__init__(config)
        self.bad, self.served = bad, {}

    def open(self, sample_id: str):
        sample, f = super().open(sample_id)
        self.served[sample_id] = self.served.get(sample_id, 0) + 1
        if self.served[sample_id] > self.bad:
            return sample, f
        with f:
            data = bytearray(f.read())
        data[-1] ^= 0xFF
        return sample, io.BytesIO(bytes(data))


class Garbage(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"<html>proxy error</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(name, per_class, bad=None, **fill)`` -> (url, history) of a started history server."""
    opened: list[Any] = []

    def start(name: str, per_class: int, *, bad: int | None = None, **fill: Any) -> tuple[str, History]:
        """``bad``: a CorruptingHistory spoiling the first ``bad`` downloads of each sample."""
        root = tmp_path / name
        if per_class:
            fill_history(root, per_class, **fill)
        config = HistoryConfig(root=root)
        history = History(config) if bad is None else CorruptingHistory(config, bad)
        server = HistoryServer(history, HistoryServerConfig(port=0, tokens=[SecretStr(TOKEN)])).start()
        opened.extend([history, server])
        return server.url, history

    yield start
    for thing in reversed(opened):
        thing.close()


@pytest.fixture
def garbage_url() -> Iterator[str]:
    """A server that answers every request with an HTML page."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Garbage)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def collector(tmp_path: Path, urls: dict[str, str], token: str = TOKEN, **collection: Any) -> Collector:
    cfg = EdgeConfig(ids=EdgeIds(site="s1", line="l1"),
                     detectors={det: DetectorLink(url=url, token=token) for det, url in urls.items()},
                     brands={BRAND: BrandSection(classes=CLASSES)}, workdir=tmp_path / "edge",
                     collection=CollectionConfig(timeout_s=5, **collection))
    (tmp_path / "edge").mkdir(exist_ok=True)
    return Collector(cfg, DatasetCache(tmp_path / "edge" / "dataset"), tmp_path / "edge" / "collection.db")


def close(c: Collector) -> None:
    c.close()
    c.cache.close()


def test_sync_is_incremental_verified_and_keeps_one_connection(serve, tmp_path: Path) -> None:
    url, history = serve("d1", 6)
    c = collector(tmp_path, {"d1": url}, page_size=4)
    reports: list[CollectionProgress] = []
    try:
        got = c.collect("t1", ["d1"], BRAND, CLASSES, report=lambda p, force=False: reports.append(p))
        assert len(got.dataset.samples) == 18 and got.dataset.counts() == {c: 6 for c in CLASSES}
        assert got.details["collection"]["d1"] == {"listed": 18, "known": 0, "fetched": 18, "cached": 0, "gone": 0,
                                                   "bytes": sum(s.size for s in history.list(0, 100)[0])}
        assert reports[-1].percent == 100 and reports[-1].samples_fetched == 18
        assert c.client("d1").stats["connections"] == 1  # keep-alive: one TCP connection for 5 pages and 18 files
        snapshot = got.snapshot

        again = c.collect("t2", ["d1"], BRAND, CLASSES)
        assert again.details["collection"]["d1"]["listed"] == 0 and again.snapshot == snapshot
        fill_history(tmp_path / "d1", 2, classes=["spot"], first=50)
        third = c.collect("t3", ["d1"], BRAND, ["good", "spot"])
        assert third.details["collection"]["d1"] == {"listed": 2, "known": 12, "fetched": 2, "cached": 0, "gone": 0,
                                                     "bytes": third.details["collection"]["d1"]["bytes"]}
        assert third.dataset.counts() == {"good": 6, "spot": 8} and third.snapshot != snapshot
    finally:
        close(c)


def test_a_corrupt_download_is_retried_then_refused(serve, tmp_path: Path) -> None:
    once, _ = serve("once", 2, bad=1, classes=["good", "spot"])
    always, _ = serve("always", 2, bad=99, classes=["good", "spot"], seed=7)
    c = collector(tmp_path, {"once": once, "always": always}, retries=1)
    try:
        assert len(c.collect("t1", ["once"], BRAND, ["good", "spot"]).dataset.samples) == 4
        with pytest.raises(CollectionError, match=r"^detector always sent corrupt data for sample [0-9a-f]{32} "
                                                  r"\(good\): sha256 [0-9a-f]{12}\.\.\. instead of [0-9a-f]{12}\.\.\. "
                                                  r"in 2 attempt\(s\)$"):
            c.collect("t2", ["always"], BRAND, ["good", "spot"])
    finally:
        close(c)


def test_offline_garbage_and_refused_detectors_are_named(serve, garbage_url: str, tmp_path: Path) -> None:
    good, _ = serve("good", 3)
    off = f"http://127.0.0.1:{free_port()}"
    urls = {"good": good, "off": off, "junk": garbage_url}
    c = collector(tmp_path, urls)
    try:
        with pytest.raises(CollectionError, match=rf"^detector off at {off} is unreachable: .*refused"):
            c.collect("t1", ["good", "off"], BRAND, CLASSES)
        with pytest.raises(CollectionError, match=r"^detector junk answered garbage to GET /v1/samples\?cursor=0&"
                                                  r"limit=500&brand=brandB&labels=good: not JSON"):
            c.collect("t2", ["junk"], BRAND, CLASSES)
    finally:
        close(c)
    refused = collector(tmp_path, {"good": good}, token="wrong-token-0123456789")
    try:
        with pytest.raises(CollectionError, match=r"^detector good refused the edge's history token \(HTTP 401\)"):
            refused.collect("t3", ["good"], BRAND, CLASSES)
    finally:
        close(refused)


def test_continue_on_error_uses_the_detectors_that_answer(serve, tmp_path: Path) -> None:
    good, _ = serve("good", 3)
    c = collector(tmp_path, {"good": good, "off": f"http://127.0.0.1:{free_port()}"}, continue_on_error=True)
    try:
        got = c.collect("t1", ["off", "good"], BRAND, CLASSES)
        assert len(got.dataset.samples) == 9 and "is unreachable" in got.details["skipped_detectors"]["off"]
        with pytest.raises(CollectionError, match="is unreachable"):
            c.collect("t2", ["off"], BRAND, CLASSES)
    finally:
        close(c)
