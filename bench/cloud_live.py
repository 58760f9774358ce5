"""The cloud on real parts for benchmarks: its processes, a simulated edge, an API and an event-stream client.

    broker = BrokerProcess("embedded", tmp / "broker", bench_users(), [CLOUD_USER]).start()
    with CloudStack(tmp / "cloud", broker) as cloud, SimEdge(broker) as edge:
        cloud.wait_edge_online()                        # the listener has persisted the edge's birth
        status, task = cloud.request("POST", "/api/v1/tasks/train", cloud.train_body())
        edge.wait_command(task["id"], 10)               # perf_counter when the edge's handler got it
        with cloud.stream(f"/api/v1/tasks/{task['id']}/events") as events:
            for received_at, event, data in events: ...

The cloud runs as it is deployed: ``python -m cloud_app listener``, ``... worker`` and
``... serve`` as three processes on one config file (SQLite database, SqliteHuey queue,
the shipped config/cloud.yaml for everything else), after ``migrate`` and an engineer
with an API token. ``in_process=True`` runs the same parts as threads of this process
instead (Backend + huey consumer threads + Listener + the Flask app on werkzeug's threaded
server), as tests/cloud/browser_support.live_cloud does. The tests' own helpers are not
imported: they need pytest and live outside any package.

The edge is a real fabbus BusClient with role edge: it records when its handler receives each
edge_command (``time.perf_counter``, first delivery per task), answers ACCEPTED (CANCELED to a
cancel), and publishes progress. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from broker.harness import HOST, BrokerProcess, free_port
from fabbus.acl import username_for
from fabbus.client import BusClient, Delivery, MqttConfig, ReceivedMessage
from fabbus.messages import CancelCommand, TaskStatus, TrainingProgress

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "config" / "cloud.yaml"
CLOUD_USER = "cloud"
SITE, LINE, DETECTOR, BRAND = "s1", "l1", "d1", "brandA"
EDGE_USER = username_for("edge", site=SITE, line=LINE)
API_USER = "bench"
STOP_TIMEOUT = 15.0


def bench_users() -> dict[str, str]:
    """Broker users of the bench (fresh random passwords): the cloud and the line's edge."""
    return {CLOUD_USER: secrets.token_urlsafe(16), EDGE_USER: secrets.token_urlsafe(16)}


# ---- the cloud

class CloudStack:
    """Listener, worker and web of one cloud on ``broker``, with its files in ``workdir``."""

    def __init__(self, workdir: Path, broker: BrokerProcess, *, in_process: bool = False,
                 event_poll_s: float | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = broker
        self.in_process = in_process
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.config_path = self.workdir / "cloud.yaml"
        data = yaml.safe_load(SHIPPED_CONFIG.read_text(encoding="utf-8")) or {}
        brands = data.get("fleet", {}).get("brands") or {BRAND: {"classes": ["good", "scratch"]}}
        data.update({
            "node": "bench",
            "database_url": f"sqlite:///{self.workdir / 'cloud.db'}",
            "huey": {**data.get("huey", {}), "name": f"bench-{secrets.token_hex(4)}", "url": None,
                     "sqlite_path": str(self.workdir / "huey.db")},
            "mqtt": {**data.get("mqtt", {}), "host": broker.host, "port": broker.port, "username": CLOUD_USER},
            "model_store": str(self.workdir / "models"),
            "fleet": {"discover": True, "brands": brands,
                      "sites": {SITE: {"lines": {LINE: {"detectors": [DETECTOR]}}}}},
        })
        web = {**data.get("web", {}), "host": HOST, "port": self.port}
        if event_poll_s is not None:
            web["event_poll_s"] = event_poll_s
        data["web"] = web
        self.config_path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        self.secret_key = secrets.token_hex(16)
        self.env = {**os.environ, "FAB_MQTT_PASSWORD": broker.users[CLOUD_USER],
                    "FAB_CLOUD_SECRET_KEY": self.secret_key, "FAB_CLOUD_CONFIG": str(self.config_path)}
        for name in ("FAB_CLOUD_DATABASE_URL", "FAB_CLOUD_REDIS_URL"):   # this bench's SQLite files, nothing else
            self.env.pop(name, None)
        self.config = self._load()
        self.token = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._closers: list[Any] = []   # in-process parts, stopped in reverse order

    def _load(self) -> Any:
        from cloud_app.config import load_config

        cfg = load_config(self.config_path)
        mqtt = cfg.mqtt.model_copy(update={"password": SecretStr(self.broker.users[CLOUD_USER])})
        huey = cfg.huey.model_copy(update={"url": None})
        return cfg.model_copy(update={"mqtt": mqtt, "huey": huey,
                                      "database_url": f"sqlite:///{self.workdir / 'cloud.db'}"})

    @property
    def classes(self) -> list[str]:
        return list(self.config.fleet.brands[BRAND].classes)

    def train_body(self, epochs: int = 2) -> dict[str, Any]:
        return {"line": f"{SITE}/{LINE}", "brand": BRAND, "detectors": [DETECTOR],
                "config": {"classes": self.classes, "epochs": epochs}}

    # ---- life cycle

    def _prepare(self) -> None:
        """Migrate, sync the fleet, make an engineer with an API token (as ``migrate`` and ``create-user`` do)."""
        from cloud_app.db import Database
        from cloud_app.fleet import sync_fleet
        from cloud_app.users import create_api_token, create_user

        db = Database(self.config.database_url)
        try:
            db.migrate()
            with db.session() as s:
                sync_fleet(s, self.config.fleet)
                user = create_user(s, API_USER, secrets.token_urlsafe(12), "engineer")
                self.token = create_api_token(s, user, "cloud bench")
        finally:
            db.close()

    def start(self, timeout: float = 60.0) -> CloudStack:
        self._prepare()
        if self.in_process:
            self._start_threads()
        else:
            self._start_processes()
        end = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                status, _ = self.request("GET", "/api/v1/fleet", timeout=5)
                if status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"cloud web not answering after {timeout:.0f} s: {self.log_tail('web')}")
            time.sleep(0.1)

    def _start_processes(self) -> None:
        base = [sys.executable, "-m", "cloud_app", "--config", str(self.config_path), "--log-level", "WARNING"]
        for name, args in (("listener", ["listener"]), ("worker", ["worker"]),
                           ("web", ["serve", "--host", HOST, "--port", str(self.port)])):
            with open(self.workdir / f"{name}.log", "ab") as log_file:   # the child keeps its own descriptor
                self.procs[name] = subprocess.Popen([*base, *args], stdin=subprocess.DEVNULL, stdout=log_file,
                                                    stderr=subprocess.STDOUT, cwd=REPO, env=self.env)

    def _start_threads(self) -> None:
        from werkzeug.serving import make_server

        from cloud_app.backend import Backend
        from cloud_app.listener import Listener
        from cloud_app.web import close_app, create_app

        cfg = self.config
        worker = Backend(cfg, role="worker", migrate=False)
        self._closers.append(worker.close)
        consumer = worker.tasks.start_consumer(cfg.huey.workers)   # as ``python -m cloud_app worker``
        self._closers.append(lambda: consumer.stop(graceful=True))
        listening = Backend(cfg, role="listener", migrate=False)
        self._closers.append(listening.close)
        listener = Listener(listening).start(timeout=10)
        self._closers.append(listener.stop)
        app = create_app({"CLOUD_CONFIG": cfg, "SECRET_KEY": self.secret_key, "MIGRATE": False})
        self._closers.append(lambda: close_app(app))
        server = make_server(HOST, self.port, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True,
                                  name="bench-web")
        thread.start()
        self._closers.append(lambda: (server.shutdown(), server.server_close(), thread.join(10)))

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"cloud {name} exited with code {p.returncode}: {self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        if self.in_process:
            return "(in process: see this process's log)"
        try:
            text = (self.workdir / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:]) or "<empty log>"

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs.items():
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("cloud %s ignored SIGTERM for %.0f s; killing it", name, STOP_TIMEOUT)
                p.kill()
                p.wait()
        self.procs.clear()
        while self._closers:
            try:
                self._closers.pop()()
            except Exception:   # a stop must go on with the other parts
                log.exception("stopping an in-process cloud part failed")

    def __enter__(self) -> CloudStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- the API

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """One API call with the bench's token on a fresh connection: (status, decoded JSON or None)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw[:300]

    def wait_edge_online(self, timeout: float = 30.0) -> None:
        """Until the fleet shows the line's edge online: the listener runs and has persisted its birth."""
        end = time.monotonic() + timeout
        while True:
            self._check_alive()
            status, line = self.request("GET", f"/api/v1/lines/{SITE}/{LINE}", timeout=5)
            if status == 200 and (line.get("edge") or {}).get("online"):
                return
            if time.monotonic() > end:
                raise RuntimeError(f"the listener did not record edge {SITE}/{LINE} online within {timeout:.0f} s "
                                   f"(last answer {status}: {line}): {self.log_tail('listener')}")
            time.sleep(0.1)

    @contextlib.contextmanager
    def stream(self, path: str, timeout: float = 30.0) -> Iterator[Iterator[tuple[float, str, Any]]]:
        """An open event stream: (perf_counter when the frame was complete, event, data) per frame."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}",
                                               "Accept": "text/event-stream"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}: {resp.read()[:300]!r}")
            yield parse_sse(resp.readline)
        finally:
            conn.close()


def parse_sse(readline: Any) -> Iterator[tuple[float, str, Any]]:
    """Frames of an SSE stream read line by line; comments, ``retry`` and id-only frames are skipped.

    Each frame is stamped with ``time.perf_counter()`` when its closing blank line arrived.
    Ends when ``readline`` returns b"" (the server closed the stream).
    """
    event, data = "", []
    while True:
        line = readline()
        if not line:
            return
        text = line.decode("utf-8").rstrip("\r\n")
        if text == "":
            if data:
                received = time.perf_counter()
                raw = "\n".join(data)
                try:
                    payload: Any = json.loads(raw)
                except ValueError:
                    payload = raw
                yield received, event or "message", payload
            event, data = "", []
        elif text.startswith(":"):
            continue
        else:
            name, _, value = text.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)


# ---- the edge

class SimEdge:
    """The line's edge as the cloud sees it: a real BusClient (role edge) that acknowledges every command."""

    def __init__(self, broker: BrokerProcess, site: str = SITE, line: str = LINE) -> None:
        user = username_for("edge", site=site, line=line)
        cfg = MqttConfig(host=broker.host, port=broker.port, username=user, password=broker.users[user],
                         reconnect_min_delay=0.1, reconnect_max_delay=1.0, connect_timeout=10.0)
        self.client = BusClient(cfg, "edge", {"site": site, "line": line})
        self.received: dict[str, float] = {}   # task -> perf_counter of the first delivery of its command
        self.repeats = 0                          # commands received again (a dispatch retry, a QoS 1 duplicate)
        self._cond = threading.Condition()
        self.client.subscribe("edge_command", self._on_command)

    def _on_command(self, rm: ReceivedMessage) -> None:
        now = time.perf_counter()
        body: Any = rm.body
        with self._cond:
            if body.task in self.received:
                self.repeats += 1
            else:
                self.received[body.task] = now
            self._cond.notify_all()
        if isinstance(body, CancelCommand):
            self.status(body.task, "CANCELED", "canceled on request")
        else:   # not awaited: the next command's receive time must not wait for this PUBACK
            self.status(body.task, "ACCEPTED", kind="deploy" if rm.message.type == "DeployCommand" else "train")

    def wait_command(self, task: str, timeout: float) -> float | None:
        """perf_counter when ``task``'s command arrived, or None after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: task in self.received, timeout)
            return self.received.get(task)

    def status(self, task: str, state: str, reason: str = "", kind: str = "train") -> Delivery:
        body = TaskStatus.model_validate({"task": task, "kind": kind, "state": state, "reason": reason})
        return self.client.publish("task_status", body, task=task, correlation_id=task)

    def progress(self, task: str, batch: int, batches: int) -> float:
        """Publish one batch's TrainingProgress (QoS 0, as the trainer does); perf_counter just before."""
        body = TrainingProgress(task=task, epoch=0, epochs=1, batch=batch, batches=batches,
                                percent=round(100.0 * (batch + 1) / max(batches, 1), 3),
                                accuracy=0.5 + 0.4 * batch / max(batches, 1), loss=1.0 / (1 + batch))
        sent = time.perf_counter()
        self.client.publish("task_progress", body, task=task, correlation_id=task)
        return sent

    def __enter__(self) -> SimEdge:
        self.client.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close(timeout=0.5)
