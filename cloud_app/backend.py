"""The back end as one object: what the web layer, the worker and the listener build at start.

    backend = Backend(load_config(), role="web")    # migrates the database, syncs the fleet
    task = backend.create_train_task(line="s1/l1", brand="brandA", detectors=["d1"], config={...}, user="alice")
    task = backend.create_deploy_task(line="s1/l1", brand="brandA", detectors=["d1"], model_version=3,
                                      user="alice", canary=False, override=False)
    task = backend.cancel_task(task["id"], user="alice")
    with backend.db.session(readonly=True) as s:
        queries.task_detail(s, task["id"])
    backend.close()

The web layer may instead call cloud_app.services in its request session, commit, and
then enqueue with ``backend.tasks.dispatch(task_id)`` / ``backend.tasks.cancel(task_id, reason)``
(``Backend(cfg, db=its_database, migrate=False)`` shares its Database).

Commands commit the task row first, then enqueue its huey task, so a worker always
finds the row; a lost enqueue is caught up by the follower. They return
``queries.task_dict`` of the task and raise cloud_app.errors (NotFound, Invalid, Conflict).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from fabbus.client import BusClient

from cloud_app import queries, services
from cloud_app.config import CloudConfig, load_config
from cloud_app.db import Database
from cloud_app.fleet import sync_fleet
from cloud_app.models import Task
from cloud_app.registry import ModelStore
from cloud_app.tasks import CloudTasks

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class Backend:
    def __init__(self, config: CloudConfig, *, role: str = "web", migrate: bool = True,
                 db: Database | None = None) -> None:
        """``role`` (web | worker | listener) names this process on the bus; ``db`` shares a
        Database (closed by its owner, not here); ``migrate`` applies migrations and syncs the fleet."""
        self.config = config
        self.role = role
        self._owns_db = db is None
        self.db = db if db is not None else Database(config.database_url)
        try:
            if migrate:
                self.db.migrate()
                with self.db.session() as s:
                    sync_fleet(s, config.fleet)
            self.store = ModelStore(config.model_store, config.transfer.max_model_bytes)
            self.tasks = CloudTasks(self)
        except BaseException:
            if self._owns_db:
                self.db.close()
            raise
        self._bus: BusClient | None = None
        self._bus_lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | None = None, **kwargs: Any) -> Backend:
        return cls(load_config(path), **kwargs)

    # ---- the bus (a publisher for this process, connected on first use)

    def node_id(self) -> str:
        suffix = f"-{os.getpid()}" if self.role != "listener" else ""
        return f"{self.config.node}-{self.role}{suffix}"[:64]

    def bus(self) -> BusClient:
        with self._bus_lock:
            if self._bus is None:
                client = BusClient(self.config.mqtt, "cloud", {"node": self.node_id()}, version=VERSION)
                try:
                    client.connect()
                except BaseException:
                    client.close()
                    raise
                self._bus = client
            return self._bus

    # ---- commands

    def _enqueue(self, task_id: str, send: Any) -> None:
        try:
            send()
        except Exception:  # boundary: the queue is down; the follower dispatches the task later
            log.exception("could not enqueue %s; the follower will retry", task_id)

    def _task(self, task_id: str) -> dict[str, Any]:
        with self.db.session(readonly=True) as s:
            task = s.get(Task, task_id)
            assert task is not None
            return queries.task_dict(task)

    def create_train_task(self, **kwargs: Any) -> dict[str, Any]:
        """See services.create_train_task: line, brand, detectors, config, user, base_model."""
        with self.db.session() as s:
            task_id = services.create_train_task(s, **kwargs).id
        self._enqueue(task_id, lambda: self.tasks.dispatch(task_id))
        return self._task(task_id)

    def create_deploy_task(self, **kwargs: Any) -> dict[str, Any]:
        """See services.create_deploy_task: line, brand, detectors, model_version, user, canary, override."""
        with self.db.session() as s:
            task_id = services.create_deploy_task(s, **kwargs).id
        self._enqueue(task_id, lambda: self.tasks.dispatch(task_id))
        return self._task(task_id)

    def cancel_task(self, task_id: str, *, user: str, reason: str = "") -> dict[str, Any]:
        with self.db.session() as s:
            task, send = services.cancel_task(s, task_id, user=user, reason=reason)
            why = reason or f"canceled by {user}"
        if send:
            self._enqueue(task_id, lambda: self.tasks.cancel(task_id, why))
        return self._task(task_id)

    def close(self) -> None:
        with self._bus_lock:
            if self._bus is not None:
                self._bus.close()
                self._bus = None
        self.tasks.close()
        if self._owns_db:
            self.db.close()
