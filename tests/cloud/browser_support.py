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

from backend_support import Cloud, SimEdge, Stack, Uploader, cloud_config, running_cloud
from cloud_app.config import WebConfig
from cloud_app.users import create_user
from cloud_app.web import close_app, create_app

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "correct horse battery"


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
