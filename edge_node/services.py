"""What a running task may use: the bus, the caches, the transfers; and the record of deployed models.

    services = Services.open(config, client)    # the edge node builds one; tests may build their own
    services.close()
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_node.collector import Collector
from edge_node.config import EdgeConfig
from edge_node.dataset import DatasetCache
from edge_node.deployer import Deployer
from edge_node.fetcher import Fetches, ModelCache
from edge_node.task_store import TaskStore
from edge_node.uploader import Uploads
from fabbus.client import BusClient


class DeployedModels:
    """Which model the edge last deployed (all detectors ACTIVE) per brand: ``<workdir>/deployed.json``.

    Training with ``pretrained.source: deployed`` starts from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    def get(self, brand: str) -> dict[str, Any] | None:
        with self._lock:
            return self._read().get(brand)

    def record(self, brand: str, **entry: Any) -> None:
        with self._lock:
            data = self._read()
            data[brand] = entry
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)


@dataclass
class Services:
    config: EdgeConfig
    client: BusClient
    store: TaskStore
    cache: DatasetCache
    collector: Collector
    models: ModelCache
    uploads: Uploads
    fetches: Fetches
    deployer: Deployer
    deployed: DeployedModels

    @classmethod
    def open(cls, config: EdgeConfig, client: BusClient) -> Services:
        work = config.workdir
        work.mkdir(parents=True, exist_ok=True)
        cache = DatasetCache(work / "dataset")
        models = ModelCache(work / "models")
        t = config.transfer
        return cls(config, client, TaskStore(work / "tasks"), cache, Collector(config, cache, work / "collection.db"),
                   models, Uploads(client), Fetches(client, models, quiet_s=t.quiet_s, max_retries=t.max_retries),
                   Deployer(client), DeployedModels(work / "deployed.json"))

    def deployed_bundle(self, brand: str) -> Path | None:
        """The bundle of the brand's deployed model, when the edge has it."""
        entry = self.deployed.get(brand)
        return self.models.get(entry["sha256"]) if entry else None

    def close(self) -> None:
        self.collector.close()
        self.cache.close()
