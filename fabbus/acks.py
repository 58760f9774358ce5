"""Broker acknowledgements of a bus client: CONNACK refusals, delivery and subscription handles.

paho numbers every PUBLISH and SUBSCRIBE with a message id (mid) and reports the
broker's PUBACK/SUBACK by mid on its network thread, sometimes before ``publish()``
has even returned the mid to the caller. :class:`AckTracker` pairs the two in
either order. Its lock is a leaf: nothing calls paho while holding it, so paho's
own locks (held around its callbacks) can never deadlock against it.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any

from fabbus.errors import DeliveryTimeout, FabError, NotConnectedError

AUTH_CODES = {134, 135}                     # bad user name or password; not authorized
PERMANENT_CODES = {132, 133} | AUTH_CODES   # + unsupported protocol version; client id rejected


class ConnectRefused(NotConnectedError):
    """The broker answered CONNECT with a refusal that retrying will not fix."""


class AuthenticationError(ConnectRefused):
    """The broker refused the username/password."""


class BrokerUnreachable(NotConnectedError):
    """No successful connection within the timeout (network, TLS or broker down)."""


class SubscribeRefused(FabError):
    """The broker refused a subscription (SUBACK 0x80): usually the ACL."""


def refusal(reason_code: Any, what: str) -> ConnectRefused | None:
    """The error for a refused CONNACK that retrying won't fix, or None (retry: e.g. server unavailable)."""
    if reason_code.value not in PERMANENT_CODES:
        return None
    cls = AuthenticationError if reason_code.value in AUTH_CODES else ConnectRefused
    return cls(f"{what}: {reason_code}")


def unreachable(host: str, port: int, timeout: float, failures: int,
                tls: ssl.SSLContext | None = None) -> BrokerUnreachable:
    """The error for no CONNACK in time, with what a TCP connect (and TLS handshake) says about the broker."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            if tls is not None:
                with tls.wrap_socket(sock, server_hostname=host):
                    pass
            probe = "TCP connects, but no MQTT CONNACK came back (TLS mismatch? not an MQTT port?)"
    except ssl.SSLError as exc:
        probe = f"TLS handshake fails: {exc}"
    except OSError as exc:
        probe = f"TCP connect fails: {exc}"
    attempts = f"{failures} attempts failed; " if failures else ""
    return BrokerUnreachable(f"not connected to {host}:{port} within {timeout:.1f} s ({attempts}{probe})")


class Pending:
    """One awaited acknowledgement."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Any = None

    def complete(self, result: Any) -> None:
        self.result = result
        self.event.set()


class AckTracker:
    """Pairs message ids with their acknowledgements, whichever comes first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, Pending] = {}
        self._early: dict[int, Any] = {}

    def register(self, mid: int, pending: Pending | None = None) -> Pending:
        """Called right after paho handed out ``mid``; ``pending`` may be reused until completed."""
        if pending is None or pending.event.is_set():
            pending = Pending()
        with self._lock:
            if mid in self._early:
                pending.complete(self._early.pop(mid))
            else:
                self._waiting[mid] = pending
        return pending

    def complete(self, mid: int, result: Any = None) -> None:
        """Called from paho's callback when the broker acknowledged ``mid``."""
        with self._lock:
            pending = self._waiting.pop(mid, None)
            if pending is None:
                self._early[mid] = result
                return
        pending.complete(result)

    def fail_all(self, result: Any) -> None:
        """Wake every waiter (the client is closing)."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
            self._early.clear()
        for pending in waiting.values():
            pending.complete(result)


CLOSED = object()


class Delivery:
    """A published message; ``wait()`` returns once the broker has acknowledged it.

    For QoS 1 that is the broker's PUBACK; for QoS 0 it is the moment paho wrote the
    packet to the socket (there is no acknowledgement to wait for).
    """

    def __init__(self, topic: str, qos: int, pending: Pending | None, error: str | None = None) -> None:
        self.topic = topic
        self.qos = qos
        self._pending = pending
        self._error = error

    @property
    def delivered(self) -> bool:
        return self._pending is not None and self._pending.event.is_set() and self._pending.result is not CLOSED

    def wait(self, timeout: float = 10.0) -> None:
        """Block until acknowledged; DeliveryTimeout after ``timeout`` s, NotConnectedError if it can't be."""
        if self._pending is None:
            raise NotConnectedError(f"{self.topic}: {self._error}")
        if not self._pending.event.wait(timeout):
            raise DeliveryTimeout(f"{self.topic}: QoS {self.qos} publish not acknowledged within {timeout:.1f} s")
        if self._pending.result is CLOSED:
            raise NotConnectedError(f"{self.topic}: client closed before the broker acknowledged the message")


class Subscription:
    """A handler's subscription; ``wait()`` returns once the broker granted it."""

    def __init__(self, topic_name: str, filter_: str, pending: Pending) -> None:
        self.topic_name = topic_name
        self.filter = filter_
        self._pending = pending

    def wait(self, timeout: float = 10.0) -> None:
        """Block until the first SUBACK; DeliveryTimeout after ``timeout`` s, SubscribeRefused if refused.

        A subscription made while disconnected is sent, and granted, once connected.
        """
        if not self._pending.event.wait(timeout):
            raise DeliveryTimeout(f"{self.filter}: no SUBACK within {timeout:.1f} s")
        if self._pending.result is CLOSED:
            raise NotConnectedError(f"{self.filter}: client closed before the SUBACK")
        if self._pending.result:
            raise SubscribeRefused(f"broker refused subscription {self.filter} ({self._pending.result})")
