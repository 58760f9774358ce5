"""What the edge remembers of its tasks across restarts: every task id seen, its command and its state.

    <workdir>/tasks/<task>/task.json      {"task", "kind", "command", "state", "reason", "details", ...}
    <workdir>/tasks/<task>/...            the task's own files (samples.json, train/, export/)

A command received twice (a QoS 1 redelivery, the cloud's dispatch retry, a restart)
is found here: the same content is answered with the task's current status and never
runs twice; different content under a known id is refused. Records are written
atomically (temp file, fsync, rename), so a killed edge finds each one whole.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fabbus.messages import TaskState

log = logging.getLogger(__name__)

RECORD = "task.json"
FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED, TaskState.REJECTED})
RUNNABLE_STATES = frozenset({TaskState.ACCEPTED, TaskState.IN_PROGRESS})


@dataclass
class TaskRecord:
    task: str
    kind: str                                  # train | deploy | cancel (a cancel that came first)
    command: dict[str, Any] | None             # the command's body as JSON; None for a cancel tombstone
    state: TaskState
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    received: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(**{**data, "state": TaskState(data["state"])})


class TaskStore:
    """Task records under ``<root>/<task>/task.json``, all loaded at start; thread-safe."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._records: dict[str, TaskRecord] = {}
        for path in sorted(self.root.glob(f"*/{RECORD}")):
            try:
                record = TaskRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("ignoring unreadable task record %s: %s", path, exc)
                continue
            self._records[record.task] = record
        log.info("task store %s: %s task(s) remembered", self.root, len(self._records))

    def get(self, task: str) -> TaskRecord | None:
        with self._lock:
            return self._records.get(task)

    def folder(self, task: str) -> Path:
        return self.root / task

    def save(self, record: TaskRecord) -> TaskRecord:
        record.updated = time.time()
        folder = self.folder(record.task)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{RECORD}.tmp"
        with self._lock:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(record.to_json(), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / RECORD)
            self._records[record.task] = record
        return record

    def update(self, task: str, state: TaskState, reason: str = "", details: dict[str, Any] | None = None
               ) -> TaskRecord:
        """Set a known task's state (details are merged into the previous ones)."""
        record = self.get(task)
        if record is None:
            raise KeyError(task)
        record.state, record.reason = state, reason
        record.details = {**record.details, **(details or {})}
        return self.save(record)

    def unfinished(self) -> list[TaskRecord]:
        """Tasks accepted or running when the edge stopped, oldest first: they run again (resume)."""
        with self._lock:
            pending = [r for r in self._records.values() if r.state in RUNNABLE_STATES and r.command is not None]
        return sorted(pending, key=lambda r: r.received)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
