"""Support of the browser tests: the whole cloud on real parts, the dashboard on a real HTTP server,
and headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

    with live_cloud(broker, stack, tmp_path) as live:     # back end (huey, listener) + web server
        live.url, live.cloud, live.edge, live.uploader
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from backend_support import Cloud, SimEdge, Stack, cloud_config, running_cloud
from cloud_app.config import WebConfig
from cloud_app.users import create_user
from cloud_app.web import close_app, create_app
from fabbus.client import ReceivedMessage
from fabbus.messages import TransferResult
from fabbus.transfer import Sender, bus_publisher, make_manifest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


class Uploader:
    """The edge's side of a model upload: fabbus' Sender on model_upload_*, the cloud's verdict back."""

    def __init__(self, edge: SimEdge) -> None:
        self.edge = edge
        self.results: list[TransferResult] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._senders: list[Sender] = []
        edge.client.subscribe("model_upload_result", self._on_result).wait(5)

    def _on_result(self, rm: ReceivedMessage) -> None:
        with self._cond:
            self.results.append(rm.body)  # type: ignore[arg-type]
            self._cond.notify_all()

    def upload(self, path: Path, model: str, **fields: Any) -> TransferResult:
        manifest = make_manifest(path, model=model, brand="brandA", chunk_size=4096, **fields)
        sender = Sender(path, manifest, bus_publisher(self.edge.client, "model_upload_manifest", "model_upload_chunk",
                                                      model=manifest.model))
        self.edge.client.subscribe("model_upload_request", sender.on_request, model=manifest.model).wait(5)
        self._senders.append(sender)
        thread = threading.Thread(target=lambda: (sender.send(), sender.serve(30)), daemon=True)
        thread.start()
        self._threads.append(thread)
        with self._cond:
            assert self._cond.wait_for(lambda: any(r.model == model for r in self.results), 20), "no upload result"
            return next(r for r in self.results if r.model == model)

    def close(self) -> None:
        for sender in self._senders:
            sender.close()
        for thread in self._threads:
            thread.join(10)


@dataclass
class Live:
    url: str
    cloud: Cloud
    edge: SimEdge
    uploader: Uploader


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def live_cloud(broker: Any, stack: Stack, tmp: Path) -> Iterator[Live]:
    """Back end (huey consumer threads, listener), a simulated line-1 edge, and the web app over HTTP."""
    web = WebConfig(event_poll_s=0.1, options={"keepalive_s": 5.0, "stream_max_s": 60.0})
    cfg = cloud_config(tmp, broker, stack, web=web)
    with running_cloud(cfg) as cloud, SimEdge(broker) as edge:
        with cloud.db.session() as s:
            create_user(s, "erin", PASSWORD, "engineer")
        uploader = Uploader(edge)
        app = create_app({"CLOUD_CONFIG": cfg, "SECRET_KEY": "browser-test", "MIGRATE": False,
                          "DATABASE": cloud.db})
        try:
            with serve(app) as url:
                yield Live(url, cloud, edge, uploader)
        finally:
            uploader.close()
            close_app(app)
