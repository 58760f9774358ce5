"""Test helpers: connected paho-mqtt 2 clients, message queues, and waiting without sleeping.

    with connect(broker, CLOUD) as cloud:
        cloud.subscribe(contract().topic("edge_state").filter(), qos=1)
        msg = expect_message(cloud.messages)

Every client is closed (loop stopped, socket closed) when its ``with`` block ends,
so no ResourceWarning escapes under ``filterwarnings = error``.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from fabbus.acl import username_for

T = TypeVar("T")

# The standard users of the `broker` fixture (usernames are the node's scope, see topics.yaml)
CLOUD = "cloud"
EDGE_L1 = username_for("edge", site="s1", line="l1")
EDGE_L2 = username_for("edge", site="s1", line="l2")
DET_L1_D1 = username_for("detector", site="s1", line="l1", det="d1")
DET_L1_D2 = username_for("detector", site="s1", line="l1", det="d2")
DET_L2_D1 = username_for("detector", site="s1", line="l2", det="d1")
CLOUD_USERS = [CLOUD]
STANDARD_USERNAMES = [CLOUD, EDGE_L1, EDGE_L2, DET_L1_D1, DET_L1_D2, DET_L2_D1]

_ids = itertools.count(1)


def unique_client_id(prefix: str = "t") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns() % 1_000_000}"


@dataclass(frozen=True)
class Received:
    """A message as a subscriber saw it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


def wait_for(predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what or predicate}")
        time.sleep(interval)


def expect_message(q: queue.Queue[T], timeout: float = 5.0) -> T:
    """The next message from ``q``; AssertionError when none arrives within ``timeout``."""
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no message within {timeout:.1f} s") from None


def expect_messages(q: queue.Queue[T], n: int, timeout: float = 5.0) -> list[T]:
    """The next ``n`` messages, all within ``timeout`` in total."""
    deadline = time.monotonic() + timeout
    out: list[T] = []
    while len(out) < n:
        try:
            out.append(q.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"got {len(out)} of {n} messages within {timeout:.1f} s: {out}") from None
    return out


def expect_no_message(q: queue.Queue[T], within: float = 1.0) -> None:
    """A bounded negative check: AssertionError if anything arrives within ``within`` seconds."""
    try:
        item = q.get(timeout=within)
    except queue.Empty:
        return
    raise AssertionError(f"unexpected message: {item}")


class PahoClient:
    """A paho-mqtt 2 client on its own network thread, recording what it receives."""

    def __init__(self, host: str, port: int, username: str | None, password: str | None, *,
                 client_id: str | None = None, clean_session: bool = True, keepalive: int = 60,
                 will: tuple[str, bytes, int, bool] | None = None) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self.client_id = client_id or unique_client_id(username.replace("/", "-") if username else "anon")
        self.messages: queue.Queue[Received] = queue.Queue()
        self.connack: threading.Event = threading.Event()
        self.reason_code: Any = None
        self.session_present: bool | None = None
        self._lock = threading.Lock()
        self._subacks: dict[int, list[int]] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  clean_session=clean_session, protocol=MQTTProtocolVersion.MQTTv311)
        self.client.reconnect_delay_set(0.2, 1)
        if username is not None:
            self.client.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    # ---- paho callbacks (network thread): record only, never raise
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.reason_code = reason_code
        self.session_present = bool(flags.session_present)
        self.connack.set()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        self.messages.put(Received(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), bool(msg.dup)))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # noqa: ANN001
        with self._lock:
            self._subacks[mid] = [rc.value for rc in reason_codes]

    # ---- test-facing API
    def start(self, timeout: float = 10.0) -> PahoClient:
        """Connect and wait for a successful CONNACK (AssertionError otherwise)."""
        self.connack.clear()
        self.client.connect(self.host, self.port, self.keepalive)
        self.client.loop_start()
        if not self.connack.wait(timeout):
            self.close()
            raise AssertionError(f"{self.client_id}: no CONNACK within {timeout:.1f} s")
        if self.reason_code.is_failure:
            self.close()
            raise AssertionError(f"{self.client_id}: connection refused: {self.reason_code}")
        return self

    def subscribe(self, filter_: str, qos: int = 1, timeout: float = 5.0) -> int:
        """Subscribe and wait for the SUBACK; its return code (0-2 granted QoS, 128 refused)."""
        result, mid = self.client.subscribe(filter_, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {result}"
        codes = wait_for(lambda: self._subacks.get(mid), timeout, what=f"SUBACK for {filter_}")
        return codes[0]

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                timeout: float = 5.0) -> None:
        """Publish; for QoS 1/2 wait until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(timeout)
            assert info.is_published(), f"no PUBACK for {topic} within {timeout:.1f} s"

    def disconnect(self) -> None:
        """A clean DISCONNECT (no will), then stop the network thread."""
        self.client.disconnect()
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()
        self.client._reset_sockets()  # paho closes its internal socket pair only in __del__

    def __enter__(self) -> PahoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def client_for(broker: Any, username: str | None, *, password: str | None = None, **kw: Any) -> PahoClient:
    """An unstarted PahoClient for one of ``broker.users`` (or explicit credentials)."""
    if password is None and username is not None:
        password = broker.users[username]
    return PahoClient(broker.host, broker.port, username, password, **kw)


def connect(broker: Any, username: str | None, **kw: Any) -> PahoClient:
    """A connected PahoClient for ``username``; use it in a ``with`` block."""
    return client_for(broker, username, **kw).start()
