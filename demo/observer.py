"""Watching the detectors' retained status on the bus, as a cloud-role client.

    with StatusWatch(mqtt_config) as watch:               # subscribes to detector_status of every detector
        watch.latest("plant1/line1/det/cam1")             # the newest DetectorStatus, or None
        watch.wait(lambda w: ..., timeout=30, what="...") # the predicate's value; TimeoutError naming ``what``
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fabbus.client import BusClient, MqttConfig, ReceivedMessage
from fabbus.messages import DetectorStatus

T = TypeVar("T")


class StatusWatch:
    def __init__(self, mqtt: MqttConfig, node: str | None = None) -> None:
        self.client = BusClient(mqtt, "cloud", {"node": node or f"scenario-{os.getpid()}"})
        self._status: dict[str, tuple[float, DetectorStatus]] = {}
        self._cond = threading.Condition()

    def start(self) -> StatusWatch:
        self.client.subscribe("detector_status", self.on_detector_status)
        self.client.connect()
        return self

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> StatusWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_detector_status(self, msg: ReceivedMessage) -> None:
        ids: dict[str, Any] = msg.ids
        key = f"{ids['site']}/{ids['line']}/det/{ids['det']}"
        with self._cond:
            self._status[key] = (time.time(), msg.body)  # type: ignore[assignment]
            self._cond.notify_all()

    def latest(self, key: str) -> DetectorStatus | None:
        with self._cond:
            got = self._status.get(key)
            return got[1] if got else None

    def wait(self, predicate: Callable[[StatusWatch], T], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not within {timeout:.0f} s")
                self._cond.wait(min(left, 1.0))
