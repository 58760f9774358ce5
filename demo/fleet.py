"""The demo plant: its nodes and their credentials, kept in the demo's work folder."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fabbus.acl import username_for

CLOUD_USERS = ("cloud",)


@dataclass(frozen=True)
class Node:
    role: str
    ids: dict[str, str]

    @property
    def username(self) -> str:
        return self.ids["node"] if self.role == "cloud" else username_for(self.role, **self.ids)


def plant(site: str = "plant1", lines: int = 2, detectors_per_line: int = 2) -> list[Node]:
    """Two lines, each with an edge and two detectors: the factory of the demo."""
    nodes = [Node("cloud", {"node": "cloud"})]
    for n in range(1, lines + 1):
        line = f"line{n}"
        nodes.append(Node("edge", {"site": site, "line": line}))
        nodes += [Node("detector", {"site": site, "line": line, "det": f"cam{d}"})
                  for d in range(1, detectors_per_line + 1)]
    return nodes


def credentials(path: Path, nodes: list[Node]) -> dict[str, str]:
    """username -> password, generated once and kept (mode 0600) so restarts reuse them."""
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    wanted = {n.username: known.get(n.username) or secrets.token_urlsafe(18) for n in nodes}
    if wanted != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return wanted
