"""A task's progress on the bus: the retained ``task_progress`` (rate-bounded) and ``task_metrics`` per epoch.

    reporter = BusReporter(client, "t-42", interval_s=0.5)
    train(..., reporter=reporter)                   # edge_node.progress.Reporter: progress() and epoch()
    reporter.publish(CollectionProgress(...))       # collection and deployment progress, same bound

Publishing never waits for the broker (progress is QoS 0, metrics QoS 1 queued by paho),
so reporting costs the training thread one encode and one socket write at most per
interval. A progress message that ends an epoch (or a collection / deployment step
passed ``force=True``) always goes out, so the retained message is never stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fabbus.client import BusClient
from fabbus.errors import NotConnectedError
from fabbus.messages import (
    CollectionProgress,
    DeploymentProgress,
    EpochMetrics,
    TrainingProgress,
)

log = logging.getLogger(__name__)

Progress = TrainingProgress | CollectionProgress | DeploymentProgress


class BusReporter:
    def __init__(self, client: BusClient, task: str, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client, self.task, self.interval_s, self.clock = client, task, interval_s, clock
        self._lock = threading.Lock()
        self._next = 0.0
        self.sent = {"progress": 0, "metrics": 0, "skipped": 0}
        self.last: Progress | None = None

    # ---- edge_node.progress.Reporter (called on the training thread)

    def progress(self, progress: TrainingProgress) -> None:
        self.publish(progress, force=progress.batch >= progress.batches)

    def epoch(self, metrics: EpochMetrics) -> None:
        self._send("task_metrics", metrics)
        self.sent["metrics"] += 1

    # ---- any progress body

    def publish(self, body: Progress, *, force: bool = False) -> bool:
        """Publish on the retained task_progress unless the last one is younger than the interval."""
        now = self.clock()
        with self._lock:
            self.last = body
            if not force and now < self._next:
                self.sent["skipped"] += 1
                return False
            self._next = now + self.interval_s
        self._send("task_progress", body)
        self.sent["progress"] += 1
        return True

    def _send(self, topic: str, body: Progress | EpochMetrics) -> None:
        try:
            self.client.publish(topic, body, task=self.task, correlation_id=self.task)
        except NotConnectedError as exc:  # the client was closed under a running task (shutdown)
            log.debug("task %s: %s not published: %s", self.task, topic, exc)
