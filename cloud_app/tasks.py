"""The huey side: the queue, its tasks, and a consumer that can run inside a process.

    tasks = CloudTasks(backend)           # backend.tasks: one huey per Backend
    tasks.dispatch(task_id)               # enqueue (returns at once); the worker runs it
    tasks.evaluate(version_id)
    consumer = tasks.start_consumer()      # worker threads in this process (tests, the demo); .stop()

Queue: RedisHuey when ``huey.url`` (or $FAB_CLOUD_REDIS_URL) is set, else SqliteHuey on
``huey.sqlite_path``. Tasks have fixed names, so a web process and a worker process that
build their own CloudTasks share one queue.

The follower runs every ``dispatch.follow_interval_s`` seconds (huey's periodic tasks have
minute granularity): ``cloud.follow`` reschedules itself with that delay, one chain per
queue. The chain's id lives in huey's key-value store; a newer chain ends older ones.
``cloud.follow_watchdog``, a periodic task run every minute, and the consumer's start both
start a chain when none ran lately.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

from huey import RedisHuey, SqliteHuey, crontab
from huey.api import Huey
from huey.consumer import Consumer
from sqlalchemy import select

from cloud_app import dispatch, evaluation
from cloud_app.config import HueyConfig
from cloud_app.models import Change, ModelVersion, now

if TYPE_CHECKING:
    from cloud_app.backend import Backend

log = logging.getLogger(__name__)

CHAIN_KEY, LAST_KEY = "cloud.follow.chain", "cloud.follow.last"


def make_huey(cfg: HueyConfig) -> Huey:
    if cfg.url:
        return RedisHuey(cfg.name, url=cfg.url, results=False)
    cfg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(cfg.name, filename=str(cfg.sqlite_path), results=False)


def close_huey(huey: Huey) -> None:
    """Close the queue's connections (SQLite file, Redis pool)."""
    storage = huey.storage
    pool = getattr(storage, "pool", None)
    if pool is not None:
        pool.disconnect()
    else:
        storage.close()


class ThreadConsumer(Consumer):
    """A huey consumer whose workers are threads of this process; it installs no signal handlers."""

    def _set_signal_handlers(self) -> None:
        pass


class CloudTasks:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        cfg = backend.config
        self.huey = h = make_huey(cfg.huey)

        @h.task(name="cloud.dispatch")
        def dispatch_task(task_id: str) -> None:
            state = dispatch.dispatch(backend.db, backend.bus(), cfg, task_id)
            log.info("dispatch of %s ended in %s", task_id, state)

        @h.task(name="cloud.cancel")
        def cancel_task(task_id: str, reason: str = "") -> None:
            dispatch.send_cancel(backend.db, backend.bus(), cfg, task_id, reason)

        @h.task(name="cloud.evaluate")
        def evaluate_task(version_id: int) -> None:
            try:
                evaluation.evaluate(backend.db, backend.store, cfg.gate, version_id)
            except Exception as exc:  # boundary: the version must not stay pending forever
                log.exception("evaluation of model version %s failed", version_id)
                self._evaluation_failed(version_id, exc)

        @h.task(name="cloud.follow")
        def follow_task(chain: str) -> None:
            if h.get(CHAIN_KEY, peek=True) != chain:
                log.info("follower chain %s superseded; it ends", chain)
                return
            h.put(LAST_KEY, time.time())
            try:
                self.follow_once()
            finally:
                follow_task.schedule(args=(chain,), delay=cfg.dispatch.follow_interval_s)

        @h.periodic_task(crontab(), name="cloud.follow_watchdog")
        def follow_watchdog() -> None:
            self.ensure_follower()

        self.dispatch, self.cancel, self.evaluate = dispatch_task, cancel_task, evaluate_task
        self._follow = follow_task

    def follow_once(self) -> dict[str, list[str]]:
        """One pass of the follower (tasks, then model versions whose evaluation was lost)."""
        cfg = self.backend.config
        done = dispatch.follow(self.backend.db, cfg, self.dispatch)
        t = now()
        with self.backend.db.session() as s:
            q = select(ModelVersion).where(ModelVersion.gate_state == "pending",
                                           ModelVersion.created_at < t - cfg.dispatch.redispatch_after_s)
            lost = [mv for mv in s.scalars(q)
                    if (mv.evaluation or {}).get("enqueued_at", 0) < t - cfg.dispatch.redispatch_after_s]
            for mv in lost:
                mv.evaluation = {"enqueued_at": t}
            lost_ids = [mv.id for mv in lost]
        for version_id in lost_ids:
            self.evaluate(version_id)
        done["evaluations"] = [str(i) for i in lost_ids]
        return done

    def ensure_follower(self, force: bool = False) -> bool:
        """Start a follower chain unless one ran within three periods; True if one was started."""
        interval = self.backend.config.dispatch.follow_interval_s
        last = self.huey.get(LAST_KEY, peek=True)
        if not force and last is not None and time.time() - last < 3 * interval + 5:
            return False
        chain = uuid.uuid4().hex
        self.huey.put(CHAIN_KEY, chain)
        self.huey.put(LAST_KEY, time.time())
        self._follow(chain)
        log.info("follower chain %s started (every %s s)", chain, interval)
        return True

    def _evaluation_failed(self, version_id: int, exc: Exception) -> None:
        with self.backend.db.session() as s:
            mv = s.get(ModelVersion, version_id)
            if mv is not None and mv.gate_state == "pending":
                mv.gate_state = "rejected"
                mv.gate_reasons = [f"evaluation failed: {type(exc).__name__}: {str(exc)[:300]}"]
                mv.evaluated_at = now()
                s.add(Change(kind="model", ref=str(mv.id)))

    def start_consumer(self, workers: int | None = None, **options: Any) -> ThreadConsumer:
        """Run worker threads in this process; call ``.stop(graceful=True)`` to end them.

        An idle SqliteHuey worker polls at most every ``max_delay`` seconds (default 1 s: that is
        the worst dispatch latency); RedisHuey blocks on the queue and starts a task at once.
        """
        options.setdefault("max_delay", 1.0)
        consumer = ThreadConsumer(self.huey, workers=workers or self.backend.config.huey.workers,
                                  worker_type="thread", **options)
        consumer.start()
        self.ensure_follower()
        return consumer

    def close(self) -> None:
        close_huey(self.huey)
