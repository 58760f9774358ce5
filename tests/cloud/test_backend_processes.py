"""The back end's processes as they are run: python -m cloud_app migrate | create-user | worker | listener."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend_support import TRAIN_CONFIG, SimEdge, no_handler_errors, wait_until  # noqa: F401
from cloud_app import queries
from cloud_app.backend import Backend
from cloud_app.config import load_config
from cloud_app.db import Database
from cloud_app.users import authenticate
from fabbus.messages import TrainCommand
from helpers import CLOUD

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, broker: Any) -> Path:
    data = {
        "node": "proc", "database_url": "sqlite:///cloud.db",
        "huey": {"name": "proc", "sqlite_path": "huey.db", "workers": 2},
        "mqtt": {"host": broker.host, "port": broker.port, "username": CLOUD},
        "model_store": "models",
        "dispatch": {"ack_timeout_s": 2, "ack_retries": 1, "follow_interval_s": 1, "poll_interval_s": 0.05},
        "fleet": {"sites": {"s1": {"lines": {"l1": {"detectors": ["d1"]}}}},
                  "brands": {"brandA": {"classes": TRAIN_CONFIG["classes"]}}},
    }
    path = tmp / "cloud.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_app", *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture
def processes(tmp_path: Path, embedded_broker: Any) -> Iterator[tuple[Path, Any]]:
    path = write_config(tmp_path, embedded_broker)
    env = {**os.environ, "FAB_MQTT_PASSWORD": embedded_broker.users[CLOUD], "FAB_LOG_LEVEL": "WARNING"}
    procs = [subprocess.Popen([sys.executable, "-m", "cloud_app", "--config", str(path), cmd], cwd=ROOT, env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for cmd in ("listener", "worker")]
    try:
        yield path, embedded_broker
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=20)[0].decode(errors="replace") for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs


def test_cli_migrate_create_user_and_check_config(tmp_path: Path, embedded_broker: Any) -> None:
    path = write_config(tmp_path, embedded_broker)
    assert cli("--config", str(path), "--check-config").stdout.strip() == "config OK"
    assert cli("--config", str(path), "migrate").returncode == 0
    made = cli("--config", str(path), "create-user", "root", "--role", "admin",
               env={"FAB_CLOUD_PASSWORD": "a good password"})
    assert made.returncode == 0, made.stderr
    again = cli("--config", str(path), "create-user", "root", env={"FAB_CLOUD_PASSWORD": "a good password"})
    assert again.returncode == 1 and "user 'root' exists" in again.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("dispatch: {ack_timeout_s: -1}\n")
    result = cli("--config", str(bad), "--check-config")
    assert result.returncode == 2 and "dispatch.ack_timeout_s" in result.stderr
    db = Database(load_config(path).database_url)
    try:
        with db.session(readonly=True) as s:
            assert authenticate(s, "root", "a good password").role == "admin"  # type: ignore[union-attr]
    finally:
        db.close()


def test_worker_and_listener_processes_run_a_task(processes: tuple[Path, Any]) -> None:
    path, broker = processes
    backend = Backend(load_config(path), role="web")  # the web process's part: create, commit, enqueue
    try:
        with SimEdge(broker) as edge:
            tid = backend.create_train_task(line="s1/l1", brand="brandA", detectors=["d1"], config=TRAIN_CONFIG,
                                            user="alice")["id"]
            wait_until(lambda: _state(backend, tid) == "ACCEPTED", timeout=30, what="ACCEPTED via the processes")
            assert isinstance(edge.commands_of(tid)[0].body, TrainCommand)
            edge.status(tid, "SUCCEEDED")
            wait_until(lambda: _state(backend, tid) == "SUCCEEDED", what="SUCCEEDED via the listener process")
    finally:
        backend.close()


def _state(backend: Backend, task_id: str) -> str:
    with backend.db.session(readonly=True) as s:
        return str(queries.task_detail(s, task_id)["state"])


def test_serve_answers_and_stops_cleanly_on_sigterm(tmp_path: Path, embedded_broker: Any) -> None:
    import time
    import urllib.request

    from broker.harness import free_port

    path = write_config(tmp_path, embedded_broker)
    assert cli("--config", str(path), "migrate").returncode == 0
    port = free_port()
    env = {**os.environ, "FAB_MQTT_PASSWORD": embedded_broker.users[CLOUD], "FAB_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "cloud_app", "--config", str(path), "serve", "--port", str(port)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline, status = time.monotonic() + 60, None
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as resp:
                    status = resp.status
            except OSError:
                time.sleep(0.2)
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out  # not -15: the server stopped, the app closed its connections
    assert f"serving on http://127.0.0.1:{port}" in out and out.rstrip().endswith("stopped"), out
