"""The whole factory, end to end: the scripted scenario on embedded defaults and on Mosquitto + Redis +
PostgreSQL; the demo's command line (URL, login, clean stop on SIGTERM); the factory's generated files."""

from __future__ import annotations

import argparse
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from scenario_support import (
    MODES,
    alive,
    database_exists,
    processes_mentioning,
    redis_keys,
    running_factory,
)

from demo.configs import Endpoints, write_configs
from demo.fleet import CLOUD_USER, Plant, Secrets
from demo.options import (
    DEFAULT_PG_ADMIN,
    BrokerUrl,
    FactoryOptions,
    add_arguments,
    from_args,
)
from demo.scenario import run_scenario
from demo.steps import ScenarioSettings

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", MODES)
def test_scenario(mode: str, tmp_path: Path) -> None:
    lines: list[str] = []
    with running_factory(mode, tmp_path / "factory") as f:
        pids = [c.pid for c in f.children.values() if c.pid]
        database, queue = f.database_name, f.queue_name
        assert len(pids) == 10  # broker, web, worker, listener, 2 edges, 4 detectors
        report = run_scenario(f, ScenarioSettings(min_inspected=600), out=lines.append)
    print("\n".join(lines))
    names = [name for name, _ in report.timings]
    assert len(names) == 8, names
    line1, base, line2 = report.facts["line1_model"], report.facts["base_model"], report.facts["line2_model"]
    assert line1["line"] == "plant1/line1" and line1["gate_state"] in ("approved", "rejected")
    assert line1["gate_state"] == "approved" or line1["gate_reasons"]
    assert base["line"] == "plant1/line1" and base["lineage"]["training_config"]["pretrained"]["source"] == "file"
    assert line2["line"] == "plant1/line2" and line2["gate_state"] in ("approved", "rejected")
    cfg = line2["lineage"]["training_config"]
    assert cfg["architecture"] == "mobilenet_v2" and cfg["alpha"] == 0.35 and cfg["fine_tune"]["enabled"]
    # line 2 fine-tuned line 1's MobileNetV2: its edge fetched it from the registry (it never had it)
    assert cfg["pretrained"]["source"] == "base_model" and line2["lineage"]["parent"]["id"] == base["id"]
    assert line2["lineage"]["base_model"] == base["sha256"] != line2["sha256"]
    assert report.facts["started_from"]["line2"] == {"source": "base_model", "sha256": base["sha256"], "fetched": True}
    assert not alive(pids), "processes left running after stop()"
    if mode == "external":
        assert database and not database_exists(DEFAULT_PG_ADMIN, database)
        assert not redis_keys(queue)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_demo_command_prints_login_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "demo", "--workdir", str(work), "--web-port", "0", "--broker-port", "0",
           "--rate", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.strip().startswith("logs"):
                break
        text = "".join(out)
        url = re.search(r"dashboard\s+(http://\S+)", text)
        login = re.search(r"login\s+(\S+) / (\S+)", text)
        assert url and login, text
        with urllib.request.urlopen(f"{url.group(1)}/login", timeout=10) as resp:
            assert resp.status == 200
        assert processes_mentioning(str(work)), "no factory processes found"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, text + rest
    assert "stopped" in rest
    assert not processes_mentioning(str(work)), "orphans after SIGTERM"


def test_secrets_are_generated_once_and_private(tmp_path: Path) -> None:
    plant = Plant()
    path = tmp_path / "w" / "secrets.json"
    first = Secrets.load(path, plant)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(first.mqtt) == {"cloud", "plant1/line1", "plant1/line1/det/cam1", "plant1/line1/det/cam2",
                               "plant1/line2", "plant1/line2/det/cam1", "plant1/line2/det/cam2"}
    assert set(first.edge_tokens) == {"line1", "line2"} and len(set(first.mqtt.values())) == 7
    again = Secrets.load(path, plant)
    assert again.mqtt == first.mqtt and again.admin_password == first.admin_password
    assert Secrets.load(path, plant, cloud_password="given-pw").mqtt[CLOUD_USER] == "given-pw"


def test_generated_configs_are_valid_and_hold_no_secrets(tmp_path: Path) -> None:
    plant = Plant()
    secrets = Secrets.load(tmp_path / "secrets.json", plant)
    ports = {(ln, d): 9000 + i for i, (ln, d) in enumerate((ln, d) for ln in plant.lines for d in plant.detectors(ln))}
    paths = write_configs(FactoryOptions(workdir=tmp_path), plant, Endpoints("127.0.0.1", 1999, 8999, ports), tmp_path)
    files = [paths.cloud, *paths.edges.values(), *paths.detectors.values()]
    assert len(files) == 7
    text = "".join(p.read_text() for p in files)
    for secret in [*secrets.mqtt.values(), *secrets.edge_tokens.values(), secrets.admin_password, secrets.secret_key]:
        assert secret not in text
    assert "http://127.0.0.1:9000" in paths.edges["line1"].read_text()


def test_flags() -> None:
    p = argparse.ArgumentParser()
    add_arguments(p)
    opts = from_args(p.parse_args(["--external", "--web-port", "0", "--broker-port", "0"]))
    assert (opts.broker, opts.redis_url, opts.database_url) == ("mosquitto", "redis://127.0.0.1:6379/0", "fresh")
    assert opts.mode == "mosquitto+postgresql+redis"
    opts = from_args(p.parse_args(["--broker-url", "mqtt://cloud:s%40cret@10.0.0.5:1883", "--web-port", "0"]))
    assert opts.broker == "url" and BrokerUrl.parse(opts.broker_url or "") == BrokerUrl("10.0.0.5", 1883, "cloud",
                                                                                     "s@cret")
    assert from_args(p.parse_args(["--web-port", "0", "--broker-port", "0"])).mode == "embedded+sqlite+sqlite-huey"
    with pytest.raises(ValueError):
        BrokerUrl.parse("http://host")


def test_readme_documents_the_demo_flags() -> None:
    readme = (REPO / "README.md").read_text()
    for flag in ("--external", "--broker-url", "--database-url", "--redis-url", "make scenario",
                 "Running each process on its own machine"):
        assert flag in readme, flag
