"""One inspection station, wired together: bus, serial link, camera, models, history, status.

    node = DetectorNode(load_config("config/detector.yaml")).start()
    ...
    node.close()          # LIGHT OFF, final status, offline state on the bus

Start-up order: the model store recovers (temp files of an interrupted delivery
removed, the last active model per brand found), each brand's model is loaded,
the bus client connects (a broker that is down is retried in the background:
the station inspects without it), the history server and the serial link start.
``detector_status`` (retained) is published every ``status_interval_s`` and at
once whenever a brand's model changes; ``detector_error`` reports what the station
refused, at most one per code per ``error_interval_s`` (the rest counted).
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from fabbus.client import BrokerUnreachable, BusClient
from fabbus.messages import ActiveModel, DetectorStatus, ErrorReport

from detector_node.config import DetectorConfig
from detector_node.delivery import DeliveryService
from detector_node.errors import ProtocolError
from detector_node.history import History
from detector_node.history_server import HistoryServer
from detector_node.hot_swap import ModelSlots, SwapEvent
from detector_node.inspection import COUNTERS, BrandRule, Camera, Inspector, SimulatedCamera
from detector_node.model_store import ModelEntry, ModelStore
from detector_node.runtime import ModelRunner, load_runner
from detector_node.serial_link import SerialLink

log = logging.getLogger(__name__)


class ErrorPublisher:
    """``report(code, message, topic=None, **detail)``: an ErrorReport on detector_error, rate-limited per code."""

    def __init__(self, client: BusClient, interval_s: float) -> None:
        self.client, self.interval_s = client, interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.reported = 0

    def __call__(self, code: str, message: str, *, topic: str | None = None, **detail: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(code, -1e9) < self.interval_s:
                self._suppressed[code] = self._suppressed.get(code, 0) + 1
                return
            self._last[code] = now
            suppressed = self._suppressed.pop(code, 0)
            self.reported += 1
        if suppressed:
            detail["suppressed_since_last"] = suppressed
        report = ErrorReport(code=code, message=message[:1000], topic=topic,
                             detail={k: v if isinstance(v, (int, float, bool)) else str(v) for k, v in detail.items()})
        log.warning("reporting %s: %s", code, message)
        self.client.publish("detector_error", report)


class DetectorNode:
    def __init__(self, config: DetectorConfig, *, serial_port: str | None = None, camera: Camera | None = None) -> None:
        self.config = config
        self.serial_config = config.serial.model_copy(update={"port": serial_port} if serial_port else {})
        self.client = BusClient(config.mqtt, "detector", config.ids.model_dump())
        self.report_error = ErrorPublisher(self.client, config.error_interval_s)
        self.store = ModelStore(config.params_dir, list(config.brands), keep=config.models.keep)
        self.camera = camera or SimulatedCamera(config.image_size, config.camera.seed, config.camera.defect_rate,
                                                {name: b.classes for name, b in config.brands.items()})
        self.slots = ModelSlots(self.store, self._load, probation=config.models.probation_inferences,
                                on_event=self._on_swap_event)
        self.delivery = DeliveryService(self.client, self.store, self.slots, config.delivery, self.report_error)
        self.history = History(config.history)
        self.http: HistoryServer | None = None
        self.link: SerialLink | None = None
        rules = {name: BrandRule(b.ok_class, b.default_verdict, b.error_verdict) for name, b in config.brands.items()}
        self.inspector = Inspector(config.inspection, self.camera, self.slots, rules, self._send, self.history,
                                   lambda code, message, detail: self.report_error(code, message, **detail))
        self._status_due = threading.Event()
        self._stop = threading.Event()
        self._status_thread = threading.Thread(target=self._status_loop, name="detector-status", daemon=True)

    # ---- lifecycle --------------------------------------------------------------------------------

    def start(self) -> DetectorNode:
        problems = self.store.recover() + self.slots.restore()
        self.slots.start()
        self.delivery.subscribe()
        self.client.connect(wait=False)
        try:
            self.client.wait_connected()
        except BrokerUnreachable as exc:
            log.warning("%s; inspecting without the bus, still retrying", exc)
        if problems:
            self.report_error("startup_recovery", "; ".join(problems), problems=len(problems))
        if self.config.history_server.enabled:
            self.http = HistoryServer(self.history, self.config.history_server.build()).start()
        self.link = SerialLink.open(self.serial_config, self.inspector.on_frame, on_garbage=self._on_garbage,
                                    name="mcu")
        self.inspector.start()
        self.link.start()
        self._status_thread.start()
        log.info("detector %s inspecting %s on %s", self.client.node, list(self.config.brands),
                 self.serial_config.port)
        return self

    def close(self) -> None:
        self._stop.set()
        self._status_due.set()
        if self._status_thread.ident is not None:
            self._status_thread.join(timeout=5)
        self.inspector.close()
        if self.link is not None:
            self.link.close()
        self.delivery.close()
        self.slots.close()
        if self.client.connected:
            self.publish_status()
        self.client.close()
        if self.http is not None:
            self.http.close()
        self.history.close()
        log.info("detector %s stopped", self.client.node)

    def __enter__(self) -> DetectorNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- status -----------------------------------------------------------------------------------

    def status(self) -> DetectorStatus:
        s = self.inspector.stats()
        active = {brand: ActiveModel(model=e.model, version=e.version, sha256=e.sha256)
                  for brand, e in self.slots.active_entries().items()}
        return DetectorStatus(inspected=s["inspected"], ng=s["ng"], missed=s["missed"],
                              latency_ms_p50=s["latency_ms_p50"], latency_ms_p99=s["latency_ms_p99"],
                              active_models=active,
                              counters={k: int(v) for k, v in s.items()
                                        if k in COUNTERS and k not in ("inspected", "ng", "missed")})

    def publish_status(self) -> None:
        self.client.publish("detector_status", self.status())

    def _status_loop(self) -> None:
        while not self._stop.is_set():
            self._status_due.wait(self.config.status_interval_s)
            self._status_due.clear()
            if self._stop.is_set():
                return
            try:  # boundary: a failed publish must not stop the status loop
                self.publish_status()
                if self.link is not None and not self.link.alive:
                    self.report_error("serial_link_down", f"serial port {self.serial_config.port} failed: "
                                      f"{self.link.error}; triggers are not received")
            except Exception:
                log.exception("cannot publish detector_status")

    # ---- callbacks --------------------------------------------------------------------------------

    def _load(self, brand: str, path, entry: ModelEntry) -> ModelRunner:  # noqa: ANN001 (pathlib.Path)
        b = self.config.brands[brand]
        probe = self.inspector.last_image(brand)
        if probe is None:
            probe = np.full((self.config.image_size, self.config.image_size, 3), 128, np.uint8)
        return load_runner(brand, path, entry, image_size=self.config.image_size, classes=b.classes,
                           ok_class=b.ok_class, num_threads=self.config.models.num_threads, probe=probe,
                           max_model_bytes=self.config.delivery.max_model_bytes)

    def _on_swap_event(self, event: SwapEvent) -> None:
        self.delivery.on_swap_event(event)
        self._status_due.set()

    def _send(self, frame) -> None:  # noqa: ANN001 (serial_protocol.Frame)
        if self.link is not None:
            self.link.send(frame)

    def _on_garbage(self, line: bytes, err: ProtocolError) -> None:
        total = self.link.garbage_total if self.link is not None else 0
        self.report_error("serial_garbage", f"garbage on the serial line refused ({err}): {line[:40]!r}",
                          reason=str(err.reason), total=total)
