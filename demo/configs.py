"""The config files of every process of the factory, written into its work folder.

    paths = write_configs(opts, plant, Endpoints(...), workdir)
    paths.cloud                         # WORKDIR/config/cloud.yaml
    paths.edges["line1"]                # WORKDIR/config/edge-line1.yaml
    paths.detectors[("line1", "cam1")]  # WORKDIR/config/detector-line1-cam1.yaml

The files are the processes' own formats (config/cloud.yaml, config/edge.yaml,
config/detector.yaml) with absolute paths; secrets are never written into them:
each process reads its secrets from the environment (see demo.factory). Each file
is validated with its process's own loader before anything starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from demo.fleet import BRANDS, CLOUD_USER, Plant
from demo.options import FactoryOptions

HEADER = ("# Written by demo.factory for this work folder; regenerated at every start.\n"
          "# Secrets come from the environment.\n")


@dataclass
class Endpoints:
    """Where things listen: the broker, the dashboard, each detector's history server."""

    mqtt_host: str
    mqtt_port: int
    web_port: int
    history_ports: dict[tuple[str, str], int] = field(default_factory=dict)
    huey_name: str = "fab-cloud"


@dataclass
class ConfigPaths:
    cloud: Path
    edges: dict[str, Path]
    detectors: dict[tuple[str, str], Path]


def _mqtt(ep: Endpoints, keepalive: int, username: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"host": ep.mqtt_host, "port": ep.mqtt_port, "keepalive": keepalive,
                           "reconnect_min_delay": 0.2, "reconnect_max_delay": 5.0}
    if username:
        out["username"] = username
    return out


def cloud_config(opts: FactoryOptions, plant: Plant, ep: Endpoints, work: Path) -> dict[str, Any]:
    lines = {line: {"title": f"Line {line.removeprefix('line')}", "detectors": plant.detectors(line)}
             for line in plant.lines}
    return {
        "node": "cloud",
        "database_url": f"sqlite:///{work / 'cloud' / 'cloud.db'}",   # $FAB_CLOUD_DATABASE_URL overrides
        "huey": {"name": ep.huey_name, "url": None, "sqlite_path": str(work / "cloud" / "huey.db"), "workers": 4},
        "mqtt": _mqtt(ep, 30, CLOUD_USER),
        "model_store": str(work / "cloud" / "models"),
        "dispatch": {"follow_interval_s": 2.0},
        "fleet": {"discover": True, "sites": {plant.site: {"title": plant.site.capitalize(), "lines": lines}},
                  "brands": {name: {"classes": classes} for name, classes in BRANDS.items()}},
        "web": {"host": opts.web_host, "port": ep.web_port, "event_poll_s": 0.25},
    }


def edge_config(opts: FactoryOptions, plant: Plant, ep: Endpoints, work: Path, line: str) -> dict[str, Any]:
    return {
        "ids": {"site": plant.site, "line": line},
        "mqtt": {**_mqtt(ep, opts.keepalive), "clean_session": False},  # commands and upload answers wait for it
        "detectors": {det: {"url": f"http://127.0.0.1:{ep.history_ports[(line, det)]}",
                            "token_env": "FAB_HISTORY_TOKEN"} for det in plant.detectors(line)},
        "brands": {name: {"classes": classes} for name, classes in BRANDS.items()},
        "workdir": str(work / "edges" / line),
        "progress_interval_s": 0.5,
    }


def detector_config(opts: FactoryOptions, plant: Plant, ep: Endpoints, work: Path, line: str, det: str,
                    seed: int) -> dict[str, Any]:
    home = work / "detectors" / f"{line}-{det}"
    return {
        "ids": {"site": plant.site, "line": line, "det": det},
        "mqtt": _mqtt(ep, opts.keepalive),
        "serial": {"port": "loop://"},   # --simulate-mcu replaces it with the simulator's pty
        "camera": {"kind": "simulator", "seed": seed, "defect_rate": opts.defect_rate},
        "image_size": opts.image_size,
        "brands": {name: {"classes": classes, "ok_class": classes[0]} for name, classes in BRANDS.items()},
        "params_dir": str(home / "params"),
        "history": {"root": str(home / "history"), "max_bytes": 128 * 1024**2},
        "history_server": {"enabled": True, "host": "127.0.0.1", "port": ep.history_ports[(line, det)],
                           "tokens_env": "FAB_EDGE_TOKENS"},
        "status_interval_s": 2.0,
        "simulator": {"rate_hz": opts.rate_hz, "brands": list(BRANDS), "deadline_s": 0.5},
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def write_configs(opts: FactoryOptions, plant: Plant, ep: Endpoints, work: Path) -> ConfigPaths:
    """Write and validate every process's config; ConfigError (fabbus) names a bad key."""
    from cloud_app.config import load_config as load_cloud
    from detector_node.config import load_config as load_detector
    from edge_node.config import load_config as load_edge

    folder = work / "config"
    paths = ConfigPaths(_write(folder / "cloud.yaml", cloud_config(opts, plant, ep, work)), {}, {})
    load_cloud(paths.cloud)
    for n, line in enumerate(plant.lines):
        paths.edges[line] = _write(folder / f"edge-{line}.yaml", edge_config(opts, plant, ep, work, line))
        load_edge(paths.edges[line])
        for d, det in enumerate(plant.detectors(line)):
            cfg = detector_config(opts, plant, ep, work, line, det, seed=100 * (n + 1) + d)
            paths.detectors[(line, det)] = _write(folder / f"detector-{line}-{det}.yaml", cfg)
            load_detector(paths.detectors[(line, det)])
    return paths
