"""``python -m detector_node`` as a real process: restart, SIGKILL in the middle of a delivery, SIGTERM.

The station runs with ``--simulate-mcu`` (the MCU simulator on a pty, in-process),
the edge is a BusClient in the test. After a SIGKILL with a delivery half done, the
restarted station must come back with its active and previous models intact, the
temp file of the interrupted delivery gone, and still inspecting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabbus.messages import DetectorStatus, NodeState, RollbackCommand
from fabbus.transfer import iter_chunks, make_manifest
from detector_node.model_store import sha256_file
from bus_helpers import BRANDS, Edge, last_state
from helpers import DET_L1_D1
from tiny_models import make_bundle

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp: Path, broker: Any) -> Path:
    cfg = {
        "ids": {"site": "s1", "line": "l1", "det": "d1"},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0},
        "serial": {"port": "/dev/null-replaced-by-simulate-mcu"},
        "brands": {name: {"classes": classes} for name, classes in BRANDS.items()},
        "params_dir": "params",
        "history": {"root": "history"},
        "history_server": {"enabled": True, "port": 0, "tokens_env": "TEST_EDGE_TOKENS"},
        "delivery": {"quiet_s": 30},  # the interrupted delivery must stay interrupted
        "status_interval_s": 0.3,
        "simulator": {"rate_hz": 20, "brands": ["brandA"], "deadline_s": 0.5},
    }
    path = tmp / "detector.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Station:
    def __init__(self, config: Path, password: str, log: Path) -> None:
        self.config, self.log = config, log
        self.env = {**os.environ, "FAB_MQTT_PASSWORD": password, "TEST_EDGE_TOKENS": "t" * 32}
        self.proc: subprocess.Popen | None = None

    def start(self) -> float:
        started = time.time()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "detector_node", "--config", str(self.config),
                                          "--simulate-mcu"], cwd=ROOT, env=self.env, stdout=out, stderr=out)
        return started

    def stop(self, sig: int, timeout: float = 15) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self.proc = None
        return rc


@pytest.fixture
def station(tmp_path: Path, broker: Any) -> Iterator[Station]:
    s = Station(write_config(tmp_path, broker), broker.users[DET_L1_D1], tmp_path / "station.log")
    yield s
    if s.proc is not None:
        s.proc.kill()
        s.proc.wait(10)


def online_since(edge: Edge, since: float) -> Any:
    return edge.detector.wait(lambda bodies: [b for b in bodies if isinstance(b, NodeState) and b.online
                                              and b.since >= since], timeout=30, what="station online")


def stack(tmp: Path) -> list[str]:
    return [e["model"] for e in json.loads((tmp / "params" / "brandA" / "active.json").read_text())["stack"]]


def test_restart_after_sigkill_mid_delivery_keeps_active_and_previous(tmp_path, broker, station) -> None:
    edge = Edge(broker)
    try:
        online_since(edge, station.start())
        for tag in (1, 2):
            edge.deliver(make_bundle(tmp_path / f"m{tag}.zip", tag=tag), f"m{tag}", version=tag)
            edge.statuses.wait(last_state(f"m{tag}", "ACTIVE"), what=f"m{tag} ACTIVE")
        m2_sha = sha256_file(tmp_path / "m2.zip")

        # half a delivery (manifest and the first chunk of three), then the power cut
        bundle = make_bundle(tmp_path / "m3.zip", tag=3)
        manifest = make_manifest(bundle, model="m3", brand="brandA", chunk_size=2048, version=3)
        edge.client.publish("delivery_manifest", manifest, det="d1", brand="brandA").wait()
        edge.client.publish("delivery_chunk", next(iter_chunks(bundle, 2048, "m3")), det="d1", brand="brandA").wait()
        edge.statuses.wait(last_state("m3", "DOWNLOADING"), what="m3 DOWNLOADING")
        models = tmp_path / "params" / "brandA" / "models"
        assert [p for p in models.iterdir() if p.name.endswith(".part")]
        assert station.stop(signal.SIGKILL) == -signal.SIGKILL
        assert stack(tmp_path) == ["m2", "m1"]

        restarted = station.start()
        online_since(edge, restarted)
        status = edge.detector.wait(lambda bodies: [b for b in bodies if isinstance(b, DetectorStatus)
                                                    and b.inspected > 5 and "brandA" in b.active_models],
                                    timeout=30, what="inspecting after the restart", since=restarted)
        assert status[-1].active_models["brandA"].sha256 == m2_sha and status[-1].active_models["brandA"].model == "m2"
        assert not [p for p in models.iterdir() if p.name.endswith(".part")]
        assert stack(tmp_path) == ["m2", "m1"] and len(list(models.iterdir())) == 2

        # the previous model survived: the rollback command returns to it
        edge.client.publish("model_rollback", RollbackCommand(brand="brandA", reason="after restart"), det="d1",
                            brand="brandA").wait()
        edge.statuses.wait(last_state("m2", "ROLLED_BACK"), what="m2 ROLLED_BACK")
        assert stack(tmp_path) == ["m1"]

        stopped = time.time()
        assert station.stop(signal.SIGTERM) == 0
        edge.detector.wait(lambda bodies: [b for b in bodies if isinstance(b, NodeState) and not b.online
                                           and b.reason == "shutdown" and b.since >= stopped], what="offline state")
    finally:
        edge.close()
    log = station.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "MCU simulator: McuStats(" in log
