"""The cloud side of the scale bench: a bus monitor that commands edges, and the real cloud app.

    monitor = CloudMonitor(broker.host, broker.port, "cloud", password).start()
    monitor.command(("plant", "line07"))            # a TrainCommand or CancelCommand, QoS 1, ts in the envelope
    monitor.counts                                   # unique messages received per contract topic
    app = CloudApp(workdir, broker, lines).start()  # listener + web as their own processes, SQLite in workdir
    app.get("/api/v1/fleet")                         # (seconds, JSON)

The monitor subscribes to every topic the cloud role subscribes to (as the cloud
listener does) and counts what arrives, dropping QoS 1 repeats by message id;
edges acknowledge commands with a TaskStatus, whose arrival gives the round trip.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.sim_nodes import LinePlan
from broker.harness import BrokerProcess, free_port
from fabbus.messages import CancelCommand, TrainCommand, encode
from fabbus.topics import contract
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

BRAND, CLASSES = "brandA", ["good", "scratch"]
_REPO = Path(__file__).resolve().parents[1]


class CloudMonitor:
    """A cloud-role paho client (threaded loop) that counts reports and sends commands."""

    def __init__(self, host: str, port: int, username: str, password: str, node: str = "bench") -> None:
        c = contract()
        self.host, self.port, self.node = host, port, node
        self.filters = [(t.filter(), t.qos) for t in c.topics_for("cloud", "subscribe")]
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.commands_sent = 0
        self.acks: dict[str, tuple[float, float]] = {}   # task -> (sent at, command sent -> TaskStatus received)
        self._sent_at: dict[str, float] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self._ready = threading.Event()
        self._refused: str | None = None
        self._ids = itertools.count(1)
        self._config = TrainingConfig(classes=CLASSES)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{node}",
                                  protocol=MQTTProtocolVersion.MQTTv311)
        self.client.username_pw_set(username, password)
        self.client.max_queued_messages_set(0)
        self.client.on_connect, self.client.on_subscribe = self._on_connect, self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._ready.set()
            return
        client.subscribe(self.filters)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        self._refused = f"subscriptions refused: {refused}" if refused else None
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        found = contract().match(msg.topic)
        name = found[0].name if found else "unknown"
        with self._lock:
            self.total += 1
            if msg.qos == 0:
                self.counts[name] += 1
                return
        try:
            env = json.loads(msg.payload)
            msg_id, body = env["id"], env["body"]
        except (ValueError, KeyError, TypeError):
            with self._lock:
                self.counts["invalid"] += 1
            return
        with self._lock:
            if msg_id in self._seen:
                self.counts["duplicate"] += 1
                return
            self._seen.add(msg_id)
            self.counts[name] += 1
            task = body.get("task", "") if name == "task_status" else ""
            sent = self._sent_at.pop(task, None)
            if sent is not None:
                self.acks[task] = (sent, now - sent)
                self._acked.notify_all()

    def start(self, timeout: float = 10.0) -> CloudMonitor:
        self.client.connect(self.host, self.port, 30)
        self.client.loop_start()
        if not self._ready.wait(timeout) or self._refused:
            self.close()
            raise RuntimeError(f"cloud monitor not connected: {self._refused or 'timeout'}")
        return self

    def command(self, site: str, line: str) -> str:
        """One command to a line's edge: TrainCommand, every third a CancelCommand; its task id."""
        n = next(self._ids)
        task = f"cmd-{self.node}-{n:06d}"
        body = (CancelCommand(task=task, reason="bench") if n % 3 == 0 else
                TrainCommand(task=task, brand=BRAND, detectors=["det1"], config=self._config))
        topic = contract().topic("edge_command")
        with self._lock:
            self._sent_at[task] = time.time()
        payload = encode(body, sender=f"cloud-{self.node}", correlation_id=task)
        info = self.client.publish(topic.format(site=site, line=line), payload, topic.qos, topic.retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self.commands_sent += 1
        return task

    def probe(self, site: str, line: str, timeout: float) -> float | None:
        """Send a command and wait for the edge's TaskStatus: the round trip (s), None after ``timeout``."""
        task = self.command(site, line)
        with self._acked:
            if not self._acked.wait_for(lambda: task in self.acks, timeout):
                return None
            return self.acks[task][1]

    def rtts(self, since: float = 0.0) -> list[float]:
        """Round trips of the commands sent at or after ``since`` (wall clock)."""
        with self._lock:
            return [rtt for sent, rtt in self.acks.values() if sent >= since]

    def snapshot(self) -> tuple[int, dict[str, int]]:
        with self._lock:
            return self.total, dict(self.counts)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


class CloudApp:
    """The cloud listener and web app (``python -m cloud_app``) against a broker, SQLite in ``workdir``."""

    def __init__(self, workdir: Path, broker: BrokerProcess, lines: list[LinePlan], username: str = "cloud") -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "cloud.yaml"
        sites: dict[str, Any] = {}
        for lp in lines:
            sites.setdefault(lp.site, {"lines": {}})["lines"][lp.line] = {"detectors": list(lp.detectors)}
        cfg = {"node": "bench", "database_url": f"sqlite:///{workdir / 'cloud.db'}",
               "huey": {"sqlite_path": str(workdir / "huey.db")},
               "mqtt": {"host": broker.host, "port": broker.port, "username": username},
               "model_store": str(workdir / "models"),
               "fleet": {"discover": True, "sites": sites, "brands": {BRAND: {"classes": CLASSES}}},
               "web": {"host": "127.0.0.1", "port": self.port}}
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
        self.env = {**os.environ, "FAB_MQTT_PASSWORD": broker.users[username],
                    "FAB_CLOUD_SECRET_KEY": secrets.token_hex(16), "FAB_CLOUD_CONFIG": str(self.config_path)}
        self.env.pop("FAB_CLOUD_DATABASE_URL", None)
        self.env.pop("FAB_CLOUD_REDIS_URL", None)
        self.token = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _prepare(self) -> None:
        """Migrate, sync the fleet and make an admin with an API token, before the processes start."""
        from cloud_app.config import load_config
        from cloud_app.db import Database
        from cloud_app.fleet import sync_fleet
        from cloud_app.users import create_api_token, create_user

        cfg = load_config(self.config_path)
        db = Database(cfg.database_url)
        try:
            db.migrate()
            with db.session() as s:
                sync_fleet(s, cfg.fleet)
                user = create_user(s, "bench", secrets.token_urlsafe(12), "admin")
                self.token = create_api_token(s, user, "scale bench")
        finally:
            db.close()

    def start(self, timeout: float = 60.0) -> CloudApp:
        self._prepare()
        base = [sys.executable, "-m", "cloud_app", "--config", str(self.config_path), "--log-level", "WARNING"]
        for name, args in (("listener", ["listener"]), ("web", ["serve", "--port", str(self.port)])):
            log_file = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (the child holds it)
            self.procs[name] = subprocess.Popen([*base, *args], stdin=subprocess.DEVNULL, stdout=log_file,
                                                stderr=subprocess.STDOUT, cwd=_REPO, env=self.env)
            log_file.close()
        end = time.monotonic() + timeout
        while True:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"cloud {dead[0]} exited: {self.log_tail(dead[0])}")
            try:
                self.get("/api/v1/fleet", timeout=5)
                return self
            except (OSError, RuntimeError):
                if time.monotonic() > end:
                    why = f"cloud web not answering after {timeout:.0f} s: {self.log_tail('web')}"
                    raise RuntimeError(why) from None
                time.sleep(0.2)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[float, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                                              "Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300]
            exc.close()
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail!r}") from None
        return time.perf_counter() - t0, json.loads(raw)

    def get(self, path: str, timeout: float = 30.0) -> tuple[float, Any]:
        return self.request("GET", path, timeout=timeout)

    def create_tasks(self, lines: list[LinePlan]) -> dict[str, str]:
        """A training task per line (queued; no huey worker runs): line -> task id."""
        out = {}
        for lp in lines:
            _, task = self.request("POST", "/api/v1/tasks/train", {
                "line": f"{lp.site}/{lp.line}", "brand": BRAND, "detectors": list(lp.detectors[:1]),
                "config": {"classes": CLASSES, "epochs": 1000}})
            out[lp.line] = task["id"]
        return out

    @property
    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs.items():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                log.warning("cloud %s ignored SIGTERM; killing it", name)
                p.kill()
                p.wait()
        self.procs.clear()
