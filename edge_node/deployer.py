"""Deliver a model bundle to the line's detectors, in parallel or canary first, and follow each one.

    deployer = Deployer(client)               # subscribed once: delivery_request, delivery_status, detector_state
    outcome = deployer.deploy(cmd, bundle, chunk_size=..., timeout_s=120, check=job.check, report=reporter.publish)
    outcome.ok, outcome.detectors["d1"].state, outcome.reason

Each detector gets its own fabbus Sender on its ``delivery_manifest`` / ``delivery_chunk``
topics (correlation id: the task), which answers that detector's ``delivery_request``.
The detector's retained ``delivery_status`` for this task and model drives the outcome:
ACTIVE succeeds; FAILED or ROLLED_BACK fails with the detector's reason; no final state
within ``timeout_s``, or the detector's last will (``detector_state`` offline), fails
too. With ``canary`` the first detector goes alone; the others are only touched once it
is ACTIVE. DeploymentProgress (per detector and overall) goes out at every step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import (
    DeliveryStatus,
    DeployCommand,
    DeploymentProgress,
    DetectorDeployment,
    NodeState,
)
from fabbus.transfer import Sender, bus_publisher, make_manifest

log = logging.getLogger(__name__)

FINAL = {"ACTIVE", "FAILED", "ROLLED_BACK"}
_PERCENT = {"VERIFYING": 90.0, "LOADING": 95.0, "ACTIVE": 100.0}


class _Delivery:
    """One detector's delivery: its sender, the latest state, and whether it ended."""

    def __init__(self, det: str, sender: Sender | None) -> None:
        self.det, self.sender = det, sender
        self.state, self.percent, self.reason = "PENDING", 0.0, ""
        self.deadline = 0.0
        self.thread: threading.Thread | None = None

    @property
    def done(self) -> bool:
        return self.state in FINAL

    def view(self) -> DetectorDeployment:
        return DetectorDeployment(state=self.state, percent=self.percent, reason=self.reason[:500])  # type: ignore


@dataclass
class DeployOutcome:
    detectors: dict[str, DetectorDeployment]

    @property
    def ok(self) -> bool:
        return all(d.state == "ACTIVE" for d in self.detectors.values())

    @property
    def reason(self) -> str:
        bad = {det: d for det, d in self.detectors.items() if d.state != "ACTIVE"}
        parts = [f"{det} {_name(d.state) if d.state != 'PENDING' else 'not deployed'}: {d.reason}"
                 for det, d in bad.items()]
        return f"{len(bad)} of {len(self.detectors)} detector(s) failed: " + "; ".join(parts) if bad else ""


class Deployer:
    def __init__(self, client: BusClient) -> None:
        self.client = client
        self._cond = threading.Condition()
        self._active: dict[tuple[str, str], tuple[str, str, _Delivery]] = {}   # (det, brand) -> (task, model, d)
        self._states: dict[str, NodeState] = {}

    # ---- bus handlers (dispatcher thread): record and notify, never block

    def on_delivery_request(self, msg: ReceivedMessage) -> None:
        with self._cond:
            entry = self._active.get((msg.ids["det"], msg.ids["brand"]))
        if entry is not None and entry[2].sender is not None:
            entry[2].sender.on_request(msg)

    def on_delivery_status(self, msg: ReceivedMessage) -> None:
        status: DeliveryStatus = msg.body  # type: ignore[assignment]
        with self._cond:
            entry = self._active.get((msg.ids["det"], msg.ids["brand"]))
            if entry is None or entry[2].done:
                return
            task, model, d = entry
            if msg.message.correlation_id != task or status.model != model:
                return  # an older delivery's retained status, or another task's
            d.state, d.reason = status.state.value, status.reason
            d.percent = _PERCENT.get(d.state, 0.9 * status.percent if d.state == "DOWNLOADING" else d.percent)
            self._cond.notify_all()

    def on_detector_state(self, msg: ReceivedMessage) -> None:
        state: NodeState = msg.body  # type: ignore[assignment]
        with self._cond:
            self._states[msg.ids["det"]] = state
            if not state.online:
                for (det, _), (_, _, d) in self._active.items():
                    if det == msg.ids["det"] and not d.done:
                        d.state, d.reason = "FAILED", f"went offline during the delivery ({state.reason or 'last will'})"
            self._cond.notify_all()

    # ---- the task's thread

    def deploy(self, cmd: DeployCommand, bundle: Path, *, chunk_size: int, timeout_s: float,
               check: Callable[[], None] = lambda: None, report: Callable[..., Any] = lambda *a, **k: None
               ) -> DeployOutcome:
        deliveries = {det: _Delivery(det, None) for det in dict.fromkeys(cmd.detectors)}
        manifest = make_manifest(bundle, model=cmd.model, brand=cmd.brand, chunk_size=chunk_size,
                                 version=cmd.version, task=cmd.task)

        def progress(force: bool = False) -> None:
            views = {det: d.view() for det, d in deliveries.items()}
            percent = sum(v.percent for v in views.values()) / len(views)
            report(DeploymentProgress(task=cmd.task, detectors=views, percent=percent), force=force)

        groups = [list(deliveries)[:1], list(deliveries)[1:]] if cmd.canary else [list(deliveries)]
        progress(force=True)
        for i, group in enumerate(groups):
            if i and not all(deliveries[det].state == "ACTIVE" for det in groups[0]):
                canary = groups[0][0]
                for det in group:
                    deliveries[det].reason = f"canary {canary} did not become ACTIVE"
                break
            for det in group:
                deliveries[det].sender = Sender(bundle, manifest, bus_publisher(
                    self.client, "delivery_manifest", "delivery_chunk", det=det, brand=cmd.brand,
                    correlation_id=cmd.task))
            self._run([deliveries[det] for det in group], cmd, timeout_s, check, progress)
        outcome = DeployOutcome({det: d.view() for det, d in deliveries.items()})
        progress(force=True)
        return outcome

    def _run(self, group: list[_Delivery], cmd: DeployCommand, timeout_s: float, check: Callable[[], None],
             progress: Callable[..., None]) -> None:
        """Deliver to ``group`` in parallel until each is final, timed out, or the task is stopped."""
        try:
            with self._cond:
                for d in group:
                    state = self._states.get(d.det)
                    if state is not None and not state.online:
                        d.state, d.reason = "FAILED", f"offline ({state.reason or 'last will'})"
                        continue
                    self._active[(d.det, cmd.brand)] = (cmd.task, cmd.model, d)
                    d.state, d.deadline = "DOWNLOADING", time.monotonic() + timeout_s
            for d in group:
                if not d.done:
                    d.thread = threading.Thread(target=self._send, args=(d,), name=f"edge-deliver-{d.det}",
                                                daemon=True)
                    d.thread.start()
            last: list[tuple[str, float]] = []
            while True:
                check()
                with self._cond:
                    if last and _snapshot(group) == last:
                        self._cond.wait(0.2)
                    _expire(group, timeout_s)
                    snap, finished = _snapshot(group), all(d.done for d in group)
                if snap != last:
                    progress(force=[s for s, _ in snap] != [s for s, _ in last])
                    last = snap
                if finished:
                    break
        finally:
            with self._cond:
                for d in group:
                    self._active.pop((d.det, cmd.brand), None)
            for d in group:
                if d.sender is not None:
                    d.sender.close()
                if d.thread is not None:
                    d.thread.join()
        for d in group:
            log.info("task %s: %s %s %s", cmd.task, d.det, d.state, d.reason)

    def _send(self, d: _Delivery) -> None:
        assert d.sender is not None
        try:  # boundary: a failed send ends this detector's delivery, not the task
            d.sender.send()
            d.sender.serve()
        except Exception as exc:
            log.exception("delivery to %s failed", d.det)
            with self._cond:
                if not d.done:
                    d.state, d.reason = "FAILED", f"sending failed: {type(exc).__name__}: {exc}"
                self._cond.notify_all()


def _snapshot(group: list[_Delivery]) -> list[tuple[str, float]]:
    return [(d.state, d.percent) for d in group]


def _expire(group: list[_Delivery], timeout_s: float) -> None:
    now = time.monotonic()
    for d in group:
        if not d.done and now >= d.deadline:
            d.reason = f"timeout: not ACTIVE within {timeout_s:g} s (last state {d.state} at {d.percent:.0f}%)"
            d.state = "FAILED"


def _name(state: Any) -> str:
    return str(getattr(state, "value", state))
