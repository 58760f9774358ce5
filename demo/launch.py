"""The command line and the environment of each process of the factory.

    launch = Launch(options, plant, secrets, paths, endpoints, logs, database_url)
    launch.children()               # {"web": Child, "worker": ..., "detector-line1-cam1": ..., "edge-line1": ...}
    launch.cloud_command("migrate") # argv of a one-shot cloud command, with launch.cloud_env()

Secrets reach the processes through their environment only, as each process's
config documents: FAB_MQTT_PASSWORD (every process, its own broker password),
FAB_EDGE_TOKENS (a detector: its line's edge token), FAB_HISTORY_TOKEN (an edge: the
same token), FAB_CLOUD_SECRET_KEY, FAB_CLOUD_DATABASE_URL and FAB_CLOUD_REDIS_URL (the
cloud). Secrets of the factory's own environment are never passed on.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from demo.cloud_api import ApiError, CloudApi
from demo.configs import ConfigPaths, Endpoints
from demo.fleet import CLOUD_USER, Plant, Secrets
from demo.options import FactoryOptions
from demo.procs import Child
from fabbus import acl, passwords

log = logging.getLogger(__name__)

SECRET_ENV = ("FAB_MQTT_PASSWORD", "FAB_EDGE_TOKENS", "FAB_HISTORY_TOKEN", "FAB_CLOUD_DATABASE_URL",
              "FAB_CLOUD_REDIS_URL", "FAB_CLOUD_SECRET_KEY", "FAB_CLOUD_PASSWORD", "FAB_CLOUD_CONFIG")


@dataclass
class Launch:
    options: FactoryOptions
    plant: Plant
    secrets: Secrets
    paths: ConfigPaths
    endpoints: Endpoints
    logs: Path
    database_url: str | None = None    # PostgreSQL; None: the SQLite file of the cloud config

    def env(self, **secrets: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
        env.update({"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}, **self.options.extra_env)
        env.update(secrets)
        return env

    def cloud_env(self, **more: str) -> dict[str, str]:
        env = {"FAB_MQTT_PASSWORD": self.secrets.mqtt[CLOUD_USER], "FAB_CLOUD_SECRET_KEY": self.secrets.secret_key}
        if self.database_url:
            env["FAB_CLOUD_DATABASE_URL"] = self.database_url
        if self.options.redis_url:
            env["FAB_CLOUD_REDIS_URL"] = self.options.redis_url
        return self.env(**env, **more)

    def cloud_command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cloud_app", "--config", str(self.paths.cloud),
                "--log-level", self.options.log_level, *args]

    def one_shot(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        return Child(name, argv, env, self.logs / f"{name}.log")

    def children(self) -> dict[str, Child]:
        """Every long-running process, by name, in start order."""
        py, lvl, s, out = sys.executable, ["--log-level", self.options.log_level], self.secrets, {}
        commands = {"web": self.cloud_command("serve", "--port", str(self.endpoints.web_port)),
                    "worker": self.cloud_command("worker"), "listener": self.cloud_command("listener")}
        for name, argv in commands.items():
            out[name] = Child(name, argv, self.cloud_env(), self.logs / f"{name}.log")
        for line in self.plant.lines:
            for det in self.plant.detectors(line):
                name = f"detector-{line}-{det}"
                argv = [py, "-m", "detector_node", "--config", str(self.paths.detectors[(line, det)]),
                        "--simulate-mcu", *lvl]
                env = self.env(FAB_MQTT_PASSWORD=s.mqtt[self.plant.detector_user(line, det)],
                               FAB_EDGE_TOKENS=s.edge_tokens[line])
                out[name] = Child(name, argv, env, self.logs / f"{name}.log")
        for line in self.plant.lines:
            argv = [py, "-m", "edge_node", "--config", str(self.paths.edges[line]), *lvl]
            env = self.env(FAB_MQTT_PASSWORD=s.mqtt[self.plant.edge_user(line)], FAB_HISTORY_TOKEN=s.edge_tokens[line])
            out[f"edge-{line}"] = Child(f"edge-{line}", argv, env, self.logs / f"edge-{line}.log")
        return out


def write_broker_files(folder: Path, users: dict[str, str]) -> None:
    """For a broker the factory does not run: the password file and ACL it must be given."""
    folder.mkdir(parents=True, exist_ok=True)
    passwords.write_password_file(folder / "passwd", users)
    (folder / "acl").write_text(acl.generate([CLOUD_USER]), encoding="utf-8")


def not_online(api: CloudApi, keys: list[str], after: float = 0.0) -> list[str]:
    """The nodes of ``keys`` the cloud's fleet does not show online with a birth after ``after``
    (all of them while the API does not answer)."""
    try:
        nodes = api.nodes()
    except ApiError as exc:
        log.debug("fleet not available: %s", exc)
        return list(keys)
    return [k for k in keys if not (nodes.get(k, {}).get("online") and (nodes[k].get("since") or 0) >= after)]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
