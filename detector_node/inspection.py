"""The inspection loop: on each trigger, capture, classify with the brand's model, answer, store.

The serial reader thread hands every ``TRIG`` to :meth:`Inspector.on_frame`, which
only queues it with its arrival time. One worker thread serves the queue in order:

1. a trigger older than ``deadline_s`` is *missed*: counted, logged, not inspected
   (the queue catches up instead of answering every product late);
2. capture (``Camera``), run the brand's active model (``ModelSlots.get``), report
   the inference to the hot swapper (probation; on a rollback the same image is
   classified again by the previous model), answer ``RES <seq> OK|NG`` at once;
3. hand the image, its ground-truth label and the verdict to the history thread
   through a bounded queue (full: the sample is not stored, counted).

A brand that is not configured, or has no model yet, gets its configured default
verdict (counted ``unknown_brand`` / ``no_model``); a model error outside
probation gets the brand's ``error_verdict`` (counted ``errors``). An answer that
leaves later than the deadline counts as missed too (the MCU sees it late). The
queue is bounded: on overflow the oldest trigger is dropped and counted missed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from detector_node.camera_sim import CameraSimulator
from detector_node.errors import LinkError
from detector_node.history import History
from detector_node.serial_protocol import MAX_SEQ, Frame, Heartbeat, Light, Result, Trigger

log = logging.getLogger(__name__)

Verdict = Literal["OK", "NG"]
UNLABELLED = "unlabelled"
COUNTERS = ("triggers", "inspected", "ok", "ng", "missed", "late", "no_model", "unknown_brand", "errors",
            "rolled_back", "write_errors", "stored", "history_dropped", "history_errors")


class InspectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deadline_s: float = Field(default=0.15, gt=0, description="a trigger not answered within this is missed")
    queue_size: int = Field(default=256, ge=1, description="waiting triggers; overflow drops the oldest (missed)")
    history_queue: int = Field(default=256, ge=1, description="images waiting to be stored; overflow not stored")
    default_verdict: Verdict = Field(default="NG", description="answer for a brand that is not configured")
    heartbeat_s: float = Field(default=1.0, gt=0, description="HB frames to the MCU")
    latency_window: int = Field(default=2000, ge=10, description="recent inferences the percentiles cover")


@dataclass(frozen=True)
class Capture:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    label: str | None  # ground truth when the source knows it (the simulator does)


class Camera(Protocol):
    """An image source: a real camera driver or :class:`SimulatedCamera`."""

    def capture(self, brand: str, seq: int) -> Capture: ...


class SimulatedCamera:
    """:class:`detector_node.camera_sim.CameraSimulator` per brand, created on first use."""

    def __init__(self, size: int, seed: int = 0, defect_rate: float = 0.3,
                 classes: dict[str, list[str]] | None = None) -> None:
        self.size, self.seed, self.defect_rate = size, seed, defect_rate
        self._classes = classes or {}
        self._sims: dict[str, CameraSimulator] = {}

    def simulator(self, brand: str) -> CameraSimulator:
        sim = self._sims.get(brand)
        if sim is None:
            kwargs = {"classes": self._classes[brand]} if brand in self._classes else {}
            sim = self._sims[brand] = CameraSimulator(brand, self.size, self.seed, self.defect_rate, **kwargs)
        return sim

    def capture(self, brand: str, seq: int) -> Capture:
        image, label = self.simulator(brand).capture(seq)
        return Capture(image, label)


@dataclass(frozen=True)
class BrandRule:
    ok_class: str
    default_verdict: Verdict = "NG"  # no model yet
    error_verdict: Verdict = "NG"  # the model failed on this image


class Models(Protocol):
    """The part of :class:`detector_node.hot_swap.ModelSlots` the loop uses."""

    def get(self, brand: str): ...

    def report(self, runner, error: str | None) -> bool: ...


ErrorHandler = Callable[[str, str, dict], None]  # (code, message, detail)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) * 1000 if values else None


class Inspector:
    def __init__(self, config: InspectionConfig, camera: Camera, models: Models, brands: dict[str, BrandRule],
                 send: Callable[[Frame], None], history: History | None = None,
                 on_error: ErrorHandler | None = None) -> None:
        self.config = config
        self.camera, self.models, self.brands = camera, models, brands
        self._send_frame, self.history = send, history
        self._on_error = on_error or (lambda code, message, detail: None)
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._lock = threading.Lock()  # counters and latency windows
        self._latency: deque[float] = deque(maxlen=config.latency_window)  # inference, seconds
        self._service: deque[float] = deque(maxlen=config.latency_window)  # trigger in -> RES out, seconds
        self._cond = threading.Condition()
        self._triggers: deque[tuple[Trigger, float]] = deque()
        self._stored: queue.Queue = queue.Queue(config.history_queue)
        self._last_image: dict[str, np.ndarray] = {}  # per brand: the probe image of a model being loaded
        self._stop = threading.Event()
        self._hb = 0
        self._worker = threading.Thread(target=self._run, name="inspection", daemon=True)
        self._storer = threading.Thread(target=self._store_loop, name="history-writer", daemon=True)

    # ---- the serial reader thread -----------------------------------------------------------------

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Trigger):
            with self._cond:
                self._triggers.append((frame, time.perf_counter()))
                overflow = len(self._triggers) > self.config.queue_size
                if overflow:
                    dropped, _ = self._triggers.popleft()
                self._cond.notify()
            self._count("triggers")
            if overflow:
                self._missed(dropped, "trigger queue full")
        elif not isinstance(frame, Heartbeat):
            log.warning("unexpected frame from the MCU: %s", frame)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> Inspector:
        self._send(Light(True))
        self._worker.start()
        self._storer.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in (self._worker, self._storer):
            if thread.ident is not None:
                thread.join(timeout=5)
        if self._worker.ident is not None:
            self._send(Light(False))
        with self._cond:
            left, self._triggers = list(self._triggers), deque()
        for trigger, _ in left:
            self._missed(trigger, "station shutting down")

    def last_image(self, brand: str) -> np.ndarray | None:
        """The latest frame captured for ``brand`` (None before the first)."""
        return self._last_image.get(brand)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once no trigger waits and every queued image is stored (tests)."""
        end = time.monotonic() + timeout
        while self._triggers or self._stored.unfinished_tasks:
            if time.monotonic() > end:
                return False
            time.sleep(0.005)
        return True

    def stats(self) -> dict:
        with self._lock:
            lat, svc = list(self._latency), list(self._service)
            counts = dict(self.counts)
        return {**counts, "latency_ms_p50": _percentile(lat, 50), "latency_ms_p99": _percentile(lat, 99),
                "service_ms_p50": _percentile(svc, 50), "service_ms_p99": _percentile(svc, 99)}

    # ---- the worker -------------------------------------------------------------------------------

    def _run(self) -> None:
        next_hb = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_hb:
                self._send(Heartbeat(self._hb & MAX_SEQ))
                self._hb, next_hb = self._hb + 1, next_hb + self.config.heartbeat_s
            with self._cond:
                if not self._triggers:
                    self._cond.wait(max(0.0, next_hb - time.monotonic()))
                    continue
                trigger, received = self._triggers.popleft()
            self._serve(trigger, received)

    def _serve(self, trigger: Trigger, received: float) -> None:
        if time.perf_counter() - received > self.config.deadline_s:
            self._missed(trigger, "waited past the deadline")
            return
        rule = self.brands.get(trigger.brand)
        if rule is None:  # not captured: a brand name is not a reason to grow a simulator or the history
            self._send(Result(trigger.seq, self.config.default_verdict))
            self._count("unknown_brand")
            self._on_error("unknown_brand", f"trigger {trigger.seq} for brand {trigger.brand!r}, which this station "
                           f"is not configured for: answered {self.config.default_verdict}", {"brand": trigger.brand})
            return
        capture = self.camera.capture(trigger.brand, trigger.seq)
        self._last_image[trigger.brand] = capture.image
        verdict, latency = self._classify(trigger.brand, rule, capture.image)
        self._send(Result(trigger.seq, verdict))
        service = time.perf_counter() - received
        with self._lock:
            self.counts["inspected"] += 1
            self.counts[verdict.lower()] += 1
            if latency is not None:
                self._latency.append(latency)
            self._service.append(service)
        if service > self.config.deadline_s:
            self._count("late")
            self._missed(trigger, f"answered after {service * 1000:.1f} ms")
        try:
            self._stored.put_nowait((capture, trigger.brand, verdict))
        except queue.Full:
            self._count("history_dropped")

    def _classify(self, brand: str, rule: BrandRule, image: np.ndarray) -> tuple[Verdict, float | None]:
        runner = self.models.get(brand)
        while runner is not None:
            try:  # boundary: a delivered model may fail in any way
                result = runner.infer(image)
                error = None
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            rolled_back = self.models.report(runner, error)
            if error is None:
                return ("OK" if result.label == rule.ok_class else "NG"), result.latency_s
            if not rolled_back:
                self._count("errors")
                self._on_error("inference_failed", f"{brand}: model {runner.entry.model} failed: {error}",
                               {"brand": brand, "model": runner.entry.model})
                return rule.error_verdict, None
            self._count("rolled_back")
            runner = self.models.get(brand)
        self._count("no_model")
        return rule.default_verdict, None

    def _missed(self, trigger: Trigger, why: str) -> None:
        n = self._count("missed")
        level = logging.WARNING if n <= 20 or n % 1000 == 0 else logging.DEBUG
        log.log(level, "missed trigger #%s (seq %s, %s): %s", n, trigger.seq, trigger.brand, why)

    def _count(self, name: str) -> int:
        with self._lock:
            self.counts[name] += 1
            return self.counts[name]

    def _send(self, frame: Frame) -> None:
        try:  # boundary: the serial write
            self._send_frame(frame)
        except LinkError as exc:
            self._count("write_errors")
            log.error("cannot send %s to the MCU: %s", frame, exc)

    # ---- the history thread -----------------------------------------------------------------------

    def _store_loop(self) -> None:
        while not (self._stop.is_set() and self._stored.empty()):
            try:
                capture, brand, verdict = self._stored.get(timeout=0.1)
            except queue.Empty:
                continue
            try:  # boundary: a disk problem must not stop inspection
                if self.history is not None:
                    self.history.add(capture.image, brand, capture.label or UNLABELLED, verdict)
                    self._count("stored")
            except Exception:
                self._count("history_errors")
                log.exception("cannot store an image of %s in the history", brand)
            finally:
                self._stored.task_done()
