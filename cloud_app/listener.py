"""The cloud listener: subscribes to what edges and detectors report and persists it.

    python -m cloud_app listener [--config config/cloud.yaml]     # its own process
    listener = Listener(backend).start()                          # or a thread set inside another process
    listener.stop()

Topics: task_status, task_progress, task_metrics, edge_state, detector_state,
delivery_status, detector_status (persisted by cloud_app.ingest), model_upload_manifest
and _chunk (cloud_app.transfers.Uploads), model_fetch_request (transfers.Fetches).
Every handler runs in its own transaction; a failure is logged and counted in
``stats`` and never stops the listener (a locked SQLite database is retried).
Invalid payloads are dropped by the bus client before any handler (its ``stats``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import OperationalError

from fabbus.client import BusClient, ReceivedMessage

from cloud_app import ingest
from cloud_app.transfers import Fetches, Uploads

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cloud_app.backend import Backend

log = logging.getLogger(__name__)

DB_RETRIES = 5


class Listener:
    def __init__(self, backend: Backend, node: str | None = None) -> None:
        """``node``: this listener's id on the bus (default ``<config.node>-listener``; one per id)."""
        self.backend = backend
        cfg = backend.config
        # A persistent session (its client id is stable): QoS 1 status, metrics and uploads published while
        # the listener is down or reconnecting wait for it at the broker instead of being lost.
        mqtt_cfg = cfg.mqtt.model_copy(update={"clean_session": False})
        self.bus = BusClient(mqtt_cfg, "cloud", {"node": node or f"{cfg.node}-listener"}, version="0.1.0")
        self.uploads = Uploads(backend, self.bus)
        self.fetches = Fetches(backend, self.bus)
        self.stats = {"persisted": 0, "errors": 0}
        self._stats_lock = threading.Lock()
        discover, points = cfg.fleet.discover, cfg.max_progress_points
        routes: dict[str, Callable[[Session, ReceivedMessage], Any]] = {
            "task_status": ingest.on_task_status,
            "task_progress": lambda s, rm: ingest.on_task_progress(s, rm, max_points=points),
            "task_metrics": ingest.on_epoch_metrics,
            "edge_state": lambda s, rm: ingest.on_node_state(s, rm, discover=discover),
            "detector_state": lambda s, rm: ingest.on_node_state(s, rm, discover=discover),
            "delivery_status": lambda s, rm: ingest.on_delivery_status(s, rm, discover=discover),
            "detector_status": lambda s, rm: ingest.on_detector_status(s, rm, discover=discover),
        }
        for topic, fn in routes.items():
            self.bus.subscribe(topic, self._persisting(fn))
        self.bus.subscribe("model_upload_manifest", self._guarded(self.uploads.on_manifest))
        self.bus.subscribe("model_upload_chunk", self._guarded(self.uploads.on_chunk))
        self.bus.subscribe("model_fetch_request", self._guarded(self.fetches.on_request))

    def _count(self, name: str) -> None:
        with self._stats_lock:
            self.stats[name] += 1

    def _persisting(self, fn: Callable[[Session, ReceivedMessage], Any]) -> Callable[[ReceivedMessage], None]:
        def handler(rm: ReceivedMessage) -> None:
            for attempt in range(1, DB_RETRIES + 1):
                try:
                    with self.backend.db.session() as s:
                        fn(s, rm)
                    self._count("persisted")
                    return
                except OperationalError as exc:  # boundary: a locked or lost database is retried
                    if attempt == DB_RETRIES:
                        self._count("errors")
                        log.error("could not persist %s from %s after %s attempts: %s", rm.topic_name, rm.topic,
                                  attempt, exc)
                        return
                    time.sleep(0.1 * attempt)
                except Exception:  # boundary: one bad message never stops the listener
                    self._count("errors")
                    log.exception("could not persist %s from %s (message %s)", rm.topic_name, rm.topic,
                                  rm.message.id)
                    return
        handler.__qualname__ = f"Listener.on_{getattr(fn, '__name__', 'message')}"
        return handler

    def _guarded(self, fn: Callable[[ReceivedMessage], None]) -> Callable[[ReceivedMessage], None]:
        def handler(rm: ReceivedMessage) -> None:
            try:
                fn(rm)
            except Exception:  # boundary: transfers never stop the listener
                self._count("errors")
                log.exception("%s failed on %s (message %s)", rm.topic_name, rm.topic, rm.message.id)
        handler.__qualname__ = f"Listener.on_{rm_name(fn)}"
        return handler

    def start(self, timeout: float | None = None) -> Listener:
        self.uploads.start()
        self.bus.connect(timeout=timeout)
        log.info("listener connected as %s", self.bus.node)
        return self

    def stop(self) -> None:
        self.bus.close()
        self.uploads.close()
        self.fetches.close()

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rm_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", "message")


def run(backend: Backend) -> None:
    """Run the listener until SIGINT or SIGTERM (the process entry point)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Listener(backend) as listener:
        while not stop.wait(60):
            log.info("listener stats: %s; bus: %s", listener.stats,
                     {k: v for k, v in listener.bus.stats.items() if v})


if __name__ == "__main__":  # python -m cloud_app.listener [--config FILE]: the same as python -m cloud_app listener
    import sys

    from cloud_app.__main__ import main

    sys.exit(main([*sys.argv[1:], "listener"]))
