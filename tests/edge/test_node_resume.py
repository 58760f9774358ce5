"""``python -m edge_node`` as a real process: SIGKILL in the middle of training, restart, resume, succeed.

The edge runs as a subprocess with its YAML config and secrets in the environment;
detectors (in-process DetectorNodes) and the cloud (a BusClient) live in the test.
Killed after an epoch checkpoint, the edge's last will tells the cloud it is gone; the
restarted edge reports the task IN_PROGRESS again, resumes from the checkpoint (not
from epoch 1) and SUCCEEDS. Restarted once more, it does not run the finished task again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from helpers import EDGE_L1
from node_support import (
    BRAND,
    CHUNK,
    CLASSES,
    TOKEN,
    Cloud,
    Plant,
    training_config,
)

from fabbus.messages import NodeState, TrainCommand, TrainingProgress

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, broker: Any, urls: dict[str, str]) -> Path:
    cfg = {
        "ids": {"site": "s1", "line": "l1"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 5, "clean_session": False,
                 "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0},
        "detectors": {det: {"url": url, "token_env": "TEST_HISTORY_TOKEN"} for det, url in urls.items()},
        "brands": {BRAND: {"classes": CLASSES}},
        "workdir": "edge",
        "progress_interval_s": 0.1,
        "transfer": {"chunk_size": CHUNK, "upload_timeout_s": 60},
    }
    path = tmp / "edge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def online(cloud: Cloud, starts: int) -> None:
    """Wait for the edge's ``starts``-th birth message (its subscriptions are in place by then)."""
    cloud.edge_state.wait(lambda bodies: [b for b in bodies if isinstance(b, NodeState) and b.online][starts - 1:],
                          timeout=60, what=f"edge start {starts}")


class EdgeProcess:
    def __init__(self, config: Path, password: str, log: Path) -> None:
        self.config, self.log = config, log
        self.env = {**os.environ, "FAB_MQTT_PASSWORD": password, "TEST_HISTORY_TOKEN": TOKEN,
                    "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> EdgeProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_node", "--config", str(self.config)],
                                         cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_an_edge_killed_during_training_resumes_from_its_checkpoint(broker, tmp_path: Path,
                                                                   monkeypatch) -> None:
    with Plant(tmp_path, broker, monkeypatch) as plant, Cloud(broker, tmp_path) as cloud:
        plant.add("d1", per_class=10)
        config = write_config(tmp_path, broker, plant.urls)
        state = tmp_path / "edge" / "tasks" / "t1" / "train" / "state.json"
        edge = EdgeProcess(config, broker.users[EDGE_L1], tmp_path / "edge.log").start()
        try:
            online(cloud, 1)
            cloud.send(TrainCommand(task="t1", brand=BRAND, detectors=["d1"], config=training_config(epochs=15)))
            deadline = time.monotonic() + 120
            while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
                assert edge.alive(), edge.tail()
                assert time.monotonic() < deadline, f"no epoch checkpoint: {edge.tail()}"
                time.sleep(0.02)
            assert edge.stop(signal.SIGKILL) == -signal.SIGKILL
            killed_at = json.loads(state.read_text())["epoch"]
            assert killed_at < 15
            cloud.edge_state.wait(lambda bodies: [b for b in bodies if isinstance(b, NodeState) and not b.online
                                                  and b.reason == "connection lost"], what="the edge's last will")
            before = len(cloud.progress.bodies("t1"))

            edge = EdgeProcess(config, broker.users[EDGE_L1], tmp_path / "edge.log").start()
            done = cloud.wait_state("t1", "SUCCEEDED", "FAILED", timeout=180)
            assert done.state.value == "SUCCEEDED", f"{done.reason}\n{edge.tail()}"
            assert cloud.states("t1") == ["ACCEPTED", "IN_PROGRESS", "IN_PROGRESS", "SUCCEEDED"]
            again = cloud.status.bodies("t1")[2]
            assert again.details["resumed"] is True and again.reason == "resumed after a restart"
            resumed_from = done.details["resumed_from"]
            assert resumed_from == ["head", killed_at]
            after = [b for b in cloud.progress.bodies("t1")[before:] if isinstance(b, TrainingProgress)]
            assert after[0].epoch == resumed_from[1] + 1  # not epoch 1 again
            assert done.details["model"] in cloud.uploaded
            assert edge.stop() == 0  # SIGTERM: a clean shutdown

            edge = EdgeProcess(config, broker.users[EDGE_L1], tmp_path / "edge.log").start()
            online(cloud, 3)
            cloud.send(TrainCommand(task="t1", brand=BRAND, detectors=["d1"], config=training_config(epochs=15)))
            cloud.status.wait(lambda bodies: [b for b in bodies if getattr(b, "task", "") == "t1"][4:])
            assert cloud.states("t1")[4:] == ["SUCCEEDED"]  # reported again, not run again
            assert len(cloud.uploaded) == 1
        finally:
            edge.stop()
