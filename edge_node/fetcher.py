"""The edge's model files: a content-addressed cache, filled by training or fetched from the cloud.

    models = ModelCache(workdir / "models")
    fetches = Fetches(client, models, quiet_s=3, max_retries=5)
    client.subscribe("model_fetch_manifest", fetches.on_model_fetch_manifest)
    client.subscribe("model_fetch_chunk", fetches.on_model_fetch_chunk)
    path = fetches.fetch(model_id, sha256, task="t-7", timeout_s=300, check=job.check)

A fetch asks the cloud for the whole model on ``model_fetch_request``; the cloud answers
with a ModelManifest and chunks, which a fabbus Receiver puts together in the cache
(asking again for what is missing), or with a TransferResult REJECTED when it lacks
the model: a FetchFailed saying so. A cached file is checked (sha256) before use.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_node.tasks import TaskFailed
from fabbus.assembler import Receiver, TransferStatus
from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import ChunkRequest, ModelManifest, TransferResult
from fabbus.model_bundle import sha256_file

log = logging.getLogger(__name__)


class FetchFailed(TaskFailed):
    """The cloud has no such model, sent another one, or did not answer in time."""


class ModelCache:
    """Bundles named by their sha256: ``<root>/<sha256>.zip``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        return self.root / f"{sha256}.zip"

    def get(self, sha256: str) -> Path | None:
        """The cached file when present and intact (a damaged one is removed)."""
        path = self.path_for(sha256)
        if not path.is_file():
            return None
        if sha256_file(path) != sha256:
            log.warning("cached model %s is damaged; removing it", path)
            path.unlink(missing_ok=True)
            return None
        return path

    def put(self, source: Path, sha256: str) -> Path:
        """Copy a file into the cache (atomically)."""
        dest = self.path_for(sha256)
        if not dest.is_file():
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        return dest


class _Fetch:
    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.refused: TransferResult | None = None
        self.done = threading.Event()


class Fetches:
    def __init__(self, client: BusClient, models: ModelCache, *, quiet_s: float = 3.0, max_retries: int = 5) -> None:
        self.client, self.models = client, models
        self.quiet_s, self.max_retries = quiet_s, max_retries
        self._lock = threading.Lock()
        self._active: dict[str, _Fetch] = {}

    # ---- bus handlers (dispatcher thread)

    def on_model_fetch_manifest(self, msg: ReceivedMessage) -> None:
        fetch = self._get(msg)
        if fetch is None:
            return
        if isinstance(msg.body, TransferResult):
            if msg.body.state == "REJECTED":
                fetch.refused = msg.body
                fetch.done.set()
            return
        fetch.receiver.on_manifest(msg)

    def on_model_fetch_chunk(self, msg: ReceivedMessage) -> None:
        fetch = self._get(msg)
        if fetch is not None:
            fetch.receiver.on_chunk(msg)

    def _get(self, msg: ReceivedMessage) -> _Fetch | None:
        with self._lock:
            fetch = self._active.get(msg.ids["model"])
        if fetch is None:
            log.debug("%s for model %s ignored: not being fetched", msg.topic_name, msg.ids["model"][:16])
        return fetch

    # ---- the task's thread

    def fetch(self, model: str, sha256: str, *, task: str, timeout_s: float,
              check: Callable[[], None] = lambda: None) -> Path:
        """The model's bundle, from the cache or fetched from the cloud; FetchFailed otherwise."""
        cached = self.models.get(sha256)
        if cached is not None:
            log.info("task %s: model %s is cached", task, model[:16])
            return cached

        def request(req: ChunkRequest) -> None:
            self.client.publish("model_fetch_request", req, model=model, correlation_id=task)

        def on_status(status: TransferStatus) -> None:
            if status.done:
                fetch.done.set()

        receiver = Receiver(lambda m: self.models.path_for(m.sha256), request=request, on_status=on_status,
                            quiet_s=self.quiet_s, max_retries=self.max_retries)
        fetch = _Fetch(receiver)
        with self._lock:
            self._active[model] = fetch
        try:
            request(ChunkRequest(model=model, reason=f"deploy task {task}"))
            deadline = time.monotonic() + timeout_s
            while not fetch.done.wait(0.2) and time.monotonic() < deadline:
                check()
            status = receiver.status  # before close(), which cancels a transfer still running
        finally:
            with self._lock:
                self._active.pop(model, None)
            receiver.close()
        return self._outcome(model, sha256, fetch.refused, status, timeout_s)

    def _outcome(self, model: str, sha256: str, refused: TransferResult | None, status: TransferStatus | None,
                 timeout_s: float) -> Path:
        if refused is not None:
            raise FetchFailed(f"the cloud has no model {model[:16]}...: {refused.reason or 'refused'}")
        if status is None:
            raise FetchFailed(f"the cloud did not answer the fetch of model {model[:16]}... within {timeout_s:g} s")
        if status.state != "COMPLETE" or status.path is None:
            why = status.reason or f"still {status.state} ({status.percent:.0f}%) after {timeout_s:g} s"
            raise FetchFailed(f"fetching model {model[:16]}... from the cloud failed: {why}")
        manifest: ModelManifest | None = status.manifest
        if manifest is None or manifest.sha256 != sha256:
            got = manifest.sha256 if manifest else "?"
            status.path.unlink(missing_ok=True)
            raise FetchFailed(f"the cloud sent model {model[:16]}... with sha256 {got[:16]}..., "
                              f"the task names {sha256[:16]}...")
        log.info("model %s fetched from the cloud (%s bytes)", model[:16], manifest.size)
        return status.path
