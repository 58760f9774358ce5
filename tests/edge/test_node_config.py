"""The edge's config: config/edge.yaml loads, ``--check-config`` names every bad key and missing secret."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_node.__main__ import main
from edge_node.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "edge.yaml"


def test_the_shipped_config_checks_out(monkeypatch, capsys) -> None:
    monkeypatch.setenv("FAB_MQTT_PASSWORD", "pw")
    monkeypatch.setenv("FAB_HISTORY_TOKEN", "t" * 32)
    assert main(["--config", str(SHIPPED), "--check-config"]) == 0
    assert capsys.readouterr().out == f"{SHIPPED}: OK (edge plant1/line1, 2 detector(s), 2 brand(s))\n"
    cfg = load_config(SHIPPED)
    assert cfg.workdir == ROOT / "config" / ".." / "var" / "edge" and cfg.limits.max_concurrent_tasks == 1
    assert cfg.detectors["cam1"].resolved_token() == "t" * 32


def test_missing_secrets_are_named(monkeypatch, capsys) -> None:
    monkeypatch.delenv("FAB_MQTT_PASSWORD", raising=False)
    monkeypatch.delenv("FAB_HISTORY_TOKEN", raising=False)
    assert main(["--config", str(SHIPPED), "--check-config"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"edge_node: error: {SHIPPED}: mqtt.password_env: environment variable FAB_MQTT_PASSWORD is not set",
        f"edge_node: error: {SHIPPED}: detectors.cam1.token_env: environment variable FAB_HISTORY_TOKEN is not set",
        f"edge_node: error: {SHIPPED}: detectors.cam2.token_env: environment variable FAB_HISTORY_TOKEN is not set",
    ]


def test_check_config_prints_the_path_of_each_bad_key(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load(SHIPPED.read_text())
    del data["ids"]["line"]
    data["detectors"]["cam1"]["url"] = "ftp://somewhere"
    data["detectors"]["cam2"]["colour"] = "blue"
    data["brands"]["brandB"]["classes"] = ["good"]
    data["limits"]["max_concurrent_tasks"] = 2
    data["transfer"]["chunk_size"] = 10
    data["progress_interval_s"] = 0
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--check-config"]) == 2
    keys = [line.split(": ")[3] for line in capsys.readouterr().err.splitlines()]
    assert keys == ["ids.line", "detectors.cam1.url", "detectors.cam2.colour", "brands.brandB.classes",
                    "limits.max_concurrent_tasks", "transfer.chunk_size", "progress_interval_s"]


@pytest.mark.parametrize(("text", "error"), [
    ("ids: [", "not valid YAML"),
    ("- a list", "<root>: expected a mapping"),
    (("ids: {site: s1, line: l1}\nmqtt: {username: other}\ndetectors: {d1: {url: 'http://h:1'}}\n"
      "brands: {b: {classes: [a, b]}}"), "mqtt.username must be empty or 's1/l1'"),
])
def test_unreadable_configs(tmp_path: Path, capsys, text: str, error: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "--check-config"]) == 2
    assert error in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml"), "--check-config"]) == 2
