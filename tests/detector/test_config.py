"""The detector's config: the shipped example is valid, and --check-config names every bad key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detector_node.__main__ import main
from detector_node.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAB_EDGE_TOKENS", "edge-token-0123456789abcdef")
    assert main(["--config", str(ROOT / "config" / "detector.yaml"), "--check-config"]) == 0
    assert "OK (2 brand(s)" in capsys.readouterr().out
    cfg = load_config(ROOT / "config" / "detector.yaml")
    assert cfg.params_dir == ROOT / "config" / ".." / "var" / "detector" / "params"


def test_check_config_prints_each_bad_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load((ROOT / "config" / "detector.yaml").read_text())
    data["brands"]["brandA"]["ok_class"] = "perfect"
    data["brands"]["bad brand"] = {"classes": ["good", "spot"]}
    data["inspection"]["deadline_s"] = -1
    data["camera"]["lens"] = "50mm"
    data["ids"]["det"] = "cam/1"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["--config", str(path), "--check-config"]) == 2
    err = capsys.readouterr().err
    for key in ("brands.brandA: ok_class 'perfect'", "brands.bad brand.[key]: String should match pattern",
                "inspection.deadline_s:", "camera.lens: Extra inputs are not permitted", "ids.det:"):
        assert key in err, err


def test_missing_edge_tokens_are_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("FAB_EDGE_TOKENS", raising=False)
    assert main(["--config", str(ROOT / "config" / "detector.yaml"), "--check-config"]) == 2
    assert "history_server.tokens_env: environment variable FAB_EDGE_TOKENS is not set" in capsys.readouterr().err
