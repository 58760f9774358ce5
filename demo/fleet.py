"""The demo plant (its lines, edges and detectors) and its secrets, kept in the work folder.

    plant = Plant("plant1", lines=2, detectors_per_line=2)
    plant.lines                        # ["line1", "line2"]
    plant.detectors("line1")           # ["cam1", "cam2"]
    secrets = Secrets.load(workdir / "secrets.json", plant)   # generated once, mode 0600

Every node authenticates on the bus with its scope as username (fabbus.acl.username_for):
an edge as ``plant1/line1``, a detector as ``plant1/line1/det/cam1``, the cloud as
``cloud``. Each line's edge has one random bearer token that its detectors' history
servers accept.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabbus.acl import username_for

CLOUD_USER = "cloud"
ADMIN_USER = "admin"
# Shared by every line: what the detectors' simulated cameras label, the OK class first.
BRANDS: dict[str, list[str]] = {
    "brandA": ["good", "scratch", "spot", "crack", "dent"],
    "brandB": ["good", "scratch", "spot"],
}


@dataclass(frozen=True)
class Plant:
    site: str = "plant1"
    lines_count: int = 2
    detectors_per_line: int = 2

    @property
    def lines(self) -> list[str]:
        return [f"line{n}" for n in range(1, self.lines_count + 1)]

    def detectors(self, line: str) -> list[str]:
        return [f"cam{d}" for d in range(1, self.detectors_per_line + 1)]

    def edge_user(self, line: str) -> str:
        return username_for("edge", site=self.site, line=line)

    def detector_user(self, line: str, det: str) -> str:
        return username_for("detector", site=self.site, line=line, det=det)

    def node_usernames(self) -> list[str]:
        """Every edge and detector, by its broker username (the cloud's node key)."""
        names = []
        for line in self.lines:
            names.append(self.edge_user(line))
            names += [self.detector_user(line, det) for det in self.detectors(line)]
        return names

    def usernames(self) -> list[str]:
        return [CLOUD_USER, *self.node_usernames()]


@dataclass
class Secrets:
    """Broker passwords per username, history tokens per line, the admin's password, the web key.

    Written to one JSON file of mode 0600; missing entries are generated, present ones kept,
    so that a restarted demo reuses them."""

    path: Path
    mqtt: dict[str, str] = field(default_factory=dict)
    edge_tokens: dict[str, str] = field(default_factory=dict)
    admin_password: str = ""
    secret_key: str = ""
    api_token: str = ""

    @classmethod
    def load(cls, path: Path, plant: Plant, *, cloud_password: str | None = None) -> Secrets:
        known: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        s = cls(path, dict(known.get("mqtt", {})), dict(known.get("edge_tokens", {})),
                known.get("admin_password", ""), known.get("secret_key", ""), known.get("api_token", ""))
        for name in plant.usernames():
            s.mqtt.setdefault(name, secrets.token_urlsafe(18))
        if cloud_password:
            s.mqtt[CLOUD_USER] = cloud_password
        for line in plant.lines:
            s.edge_tokens.setdefault(line, secrets.token_urlsafe(32))
        s.admin_password = s.admin_password or secrets.token_urlsafe(12)
        s.secret_key = s.secret_key or secrets.token_hex(32)
        s.save()
        return s

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"mqtt": self.mqtt, "edge_tokens": self.edge_tokens, "admin_password": self.admin_password,
                "secret_key": self.secret_key, "api_token": self.api_token}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
