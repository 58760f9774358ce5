"""Tasks run one at a time on a worker thread, from a bounded queue; a cancel reaches them within a batch.

    runner = TaskRunner(run_one, queue_size=4).start()
    runner.submit(Job(record, command))      # False when the queue is full (the task is REJECTED: busy)
    runner.cancel("t-42", "operator")        # "queued" (removed), "running" (its event set) or None
    runner.close()                           # the running task is stopped as "shutdown": it resumes on restart

The MQTT handlers only validate, record and queue; the work (collection, training,
transfers) happens here, so the bus connection stays responsive. ``run_one`` is the
boundary: it turns every outcome of a task into its final status.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_node.task_store import TaskRecord
from fabbus.messages import DeployCommand, TrainCommand

log = logging.getLogger(__name__)

StopReason = Literal["", "cancel", "shutdown"]


class TaskFailed(Exception):
    """The task cannot complete; ``str(exc)`` is the reason reported with FAILED, ``details`` go with it."""

    def __init__(self, reason: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.details = details or {}


class TaskStopped(Exception):
    """The task was canceled, or the edge is shutting down (then it resumes on restart)."""

    def __init__(self, why: StopReason, detail: str = "") -> None:
        super().__init__(detail or why)
        self.why = why


@dataclass
class Job:
    record: TaskRecord
    command: TrainCommand | DeployCommand
    resumed: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason = ""
    stop_detail: str = ""

    @property
    def task(self) -> str:
        return self.record.task

    def stop(self, why: StopReason, detail: str = "") -> None:
        if not self.stop_reason:
            self.stop_reason, self.stop_detail = why, detail
        self.cancel.set()

    def check(self) -> None:
        """Raise TaskStopped once a cancel or shutdown was asked for (call between steps)."""
        if self.cancel.is_set():
            raise TaskStopped(self.stop_reason or "cancel", self.stop_detail)


class TaskRunner:
    """One worker thread; at most ``1 + queue_size`` tasks accepted at once."""

    def __init__(self, run: Callable[[Job], None], queue_size: int) -> None:
        self._run = run
        self.queue_size = queue_size
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="edge-tasks", daemon=True)

    def start(self) -> TaskRunner:
        self._thread.start()
        return self

    def busy(self) -> str | None:
        """Why one more task cannot be accepted now, or None."""
        with self._cond:
            if self._load() < 1 + self.queue_size:
                return None
            running = f"task {self._running.task} is running and " if self._running is not None else ""
            return f"busy: {running}{len(self._queue)} task(s) are queued (queue_size {self.queue_size})"

    def _load(self) -> int:
        return len(self._queue) + (self._running is not None)

    def submit(self, job: Job, *, force: bool = False) -> bool:
        """Queue a job; False when busy (``force``: always, for tasks resumed after a restart)."""
        with self._cond:
            if self._closed:
                return False
            if not force and self._load() >= 1 + self.queue_size:
                return False
            self._queue.append(job)
            self._cond.notify_all()
        return True

    def cancel(self, task: str, detail: str = "") -> Literal["queued", "running"] | None:
        with self._cond:
            for job in list(self._queue):
                if job.task == task:
                    self._queue.remove(job)
                    job.stop("cancel", detail)
                    return "queued"
            if self._running is not None and self._running.task == task:
                self._running.stop("cancel", detail)
                return "running"
        return None

    def running(self) -> str | None:
        with self._cond:
            return self._running.task if self._running is not None else None

    def idle(self) -> bool:
        with self._cond:
            return self._running is None and not self._queue

    def close(self, timeout: float = 60.0) -> None:
        """Stop taking tasks; stop the running one as a shutdown (it resumes on restart); end the thread."""
        with self._cond:
            self._closed = True
            if self._running is not None:
                self._running.stop("shutdown", "the edge is shutting down")
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("task worker still busy %.0f s after shutdown was asked", timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._queue)
                if self._closed:
                    return
                job = self._running = self._queue.popleft()
            try:
                self._run(job)
            except Exception:  # boundary: the worker thread never dies
                log.exception("task %s: unexpected error in the task runner", job.task)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
