"""The receiving side of a bus client: validate at the boundary, then run handlers.

:func:`parse` validates one payload against its contract topic and raises
:class:`Dropped` with a short counter name (the reason) and a readable detail.
:class:`Dispatcher` routes each MQTT message to the handlers whose filter matches,
on its worker thread or inline, and never lets an exception escape.
:class:`Counters` keeps the client's per-reason statistics.
"""

from __future__ import annotations

import json

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from fabbus.acks import Pending
from fabbus.acl import topic_matches
from fabbus.errors import MessageError
from fabbus.messages import Body, Deduplicator, Message, decode
from fabbus.topics import Topic

log = logging.getLogger(__name__)

LOG_PAYLOAD_BYTES = 200

# Counter names; every one is present (0) in ``BusClient.stats``.
DROP_REASONS = (
    "oversized",    # payload longer than MqttConfig.max_payload_bytes
    "malformed",    # not UTF-8 JSON
    "invalid",      # bad envelope or body that fails its model
    "wrong_type",   # a message type the topic does not carry
    "duplicate",    # a message id seen before (QoS 1 redelivery)
    "unexpected",   # a topic no handler subscribed to
)
COUNTERS = (
    "received", "handled", "handler_error", "retained_clear", "published",
    "connects", "disconnects", "connect_failures", "subscribe_refused", *DROP_REASONS,
)


@dataclass(frozen=True)
class ReceivedMessage:
    """A validated message as a handler gets it."""

    topic_name: str          # the contract name, e.g. "task_status"
    ids: dict[str, str]      # the topic's placeholders, e.g. {"site": "s1", "line": "l1", "task": "t1"}
    message: Message         # the decoded envelope with its typed body
    topic: str               # the concrete MQTT topic
    qos: int
    retain: bool             # True when the broker replayed a retained message on subscribe

    @property
    def body(self) -> Body:
        return self.message.body


class Dropped(Exception):
    """A payload that no handler may see; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def truncate(payload: bytes, limit: int = LOG_PAYLOAD_BYTES) -> str:
    """A payload for a log line: at most ``limit`` bytes, with the full length when cut."""
    shown = repr(bytes(payload[:limit]))
    return shown if len(payload) <= limit else f"{shown}... ({len(payload)} bytes)"


def parse(payload: bytes, topic: Topic, max_bytes: int) -> Message:
    """Validate a payload received on ``topic`` with fabbus.messages.decode; Dropped names what is wrong."""
    if len(payload) > max_bytes:
        raise Dropped("oversized", f"{len(payload)} bytes exceed the limit of {max_bytes}")
    try:
        return decode(payload, topic.payload, max_bytes=max_bytes)
    except MessageError as exc:
        raise Dropped(_reason(str(exc)), str(exc)) from None


def _reason(error: str) -> str:
    """The counter for a decode() error, from its wording (anything unrecognised counts as invalid)."""
    if error.startswith(("not JSON", "not UTF-8")):
        return "malformed"
    if error.startswith(("unknown message type", "type ")):
        return "wrong_type"
    return "invalid"


@dataclass
class Counters:
    """Thread-safe named counters."""

    _values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)


Handler = Callable[[ReceivedMessage], None]


@dataclass(frozen=True)
class InvalidMessage:
    """A message in a readable envelope whose type or body failed validation.

    Given to a subscription's ``on_invalid`` callback (after it was logged and
    counted), so that a receiver can answer the sender, e.g. an edge REJECTING a
    command whose training configuration is invalid, with the precise reason.
    """

    topic_name: str
    ids: dict[str, str]
    topic: str
    type: str                # the envelope's type, as sent
    correlation_id: str | None
    sender: str
    reason: str              # the validation error


InvalidHandler = Callable[[InvalidMessage], None]


def _envelope_of(payload: bytes) -> dict[str, Any] | None:
    """The envelope fields of a payload that is a JSON object, else None (only for on_invalid)."""
    try:
        raw = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None


@dataclass
class Route:
    """One subscription: a contract topic, its filter and the handler."""

    topic: Topic
    filter: str
    handler: Handler
    pending: Pending = field(default_factory=Pending)  # the first SUBACK
    on_invalid: InvalidHandler | None = None


class Dispatcher:
    """Validates received messages and calls the matching handlers, in arrival order.

    ``threaded``: handlers run on one worker thread, so a slow handler never stalls
    paho's network loop (keep-alives, acknowledgements); otherwise they run inline
    on the network thread. ``done(msg)`` is called once a message was handled or
    dropped (the client acknowledges QoS 1 messages there).
    """

    def __init__(self, counters: Counters, *, max_payload_bytes: int, dedup_window: int, threaded: bool,
                 done: Callable[[mqtt.MQTTMessage, int], None], name: str = "fabbus-dispatch") -> None:
        self.counters = counters
        self.max_payload_bytes = max_payload_bytes
        self._dedup = Deduplicator(dedup_window)
        self._done = done
        self._lock = threading.Lock()
        self._routes: list[Route] = []
        self._queue: queue.SimpleQueue[tuple[mqtt.MQTTMessage, int] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True) if threaded else None

    def add(self, route: Route) -> None:
        with self._lock:
            self._routes.append(route)

    def routes(self) -> list[Route]:
        with self._lock:
            return list(self._routes)

    def start(self) -> None:
        if self._worker is not None:
            self._worker.start()

    def stop(self) -> None:
        """Handle what is queued, then end the worker thread."""
        if self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            if threading.current_thread() is not self._worker:
                self._worker.join()

    def submit(self, msg: mqtt.MQTTMessage, generation: int) -> None:
        """Called from paho's on_message (network thread)."""
        if self._worker is not None:
            self._queue.put((msg, generation))
        else:
            self._process(msg, generation)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            self._process(*item)

    def _process(self, msg: mqtt.MQTTMessage, generation: int) -> None:
        try:
            self._dispatch(msg)
        except Exception:  # boundary: nothing reaches paho's thread or stops the worker
            log.exception("unexpected error while dispatching a message (mid %s)", msg.mid)
        finally:
            self._done(msg, generation)

    def _report_invalid(self, routes: list[Route], ids: dict[str, str], raw_topic: str, payload: bytes,
                        reason: str) -> None:
        listeners = [r.on_invalid for r in routes if r.on_invalid is not None]
        env = _envelope_of(payload) if listeners else None
        if env is None:
            return
        corr = env.get("correlation_id")
        invalid = InvalidMessage(routes[0].topic.name, ids, raw_topic, str(env.get("type", "")),
                                 corr if isinstance(corr, str) else None, str(env.get("sender", "")), reason)
        for on_invalid in listeners:
            try:
                on_invalid(invalid)
            except Exception:  # boundary: like a handler
                self.counters.inc("handler_error")
                log.exception("on_invalid callback failed on %s", raw_topic)

    def _dispatch(self, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        try:
            raw_topic = msg.topic
        except UnicodeDecodeError:
            self.counters.inc("unexpected")
            log.warning("dropped a message whose topic is not UTF-8: %r", msg._topic)
            return
        routes = [r for r in self.routes() if topic_matches(r.filter, raw_topic)]
        if not payload and (msg.retain or (routes and routes[0].topic.retain)):
            # a retained message being cleared: replayed with retain=1, or live (retain=0) to current subscribers
            self.counters.inc("retained_clear")
            log.debug("ignoring a cleared retained message on %s", raw_topic)
            return
        self.counters.inc("received")
        ids = routes[0].topic.match(raw_topic) if routes else None
        try:
            if ids is None:
                raise Dropped("unexpected", "no subscription of this client matches the topic")
            message = parse(payload, routes[0].topic, self.max_payload_bytes)
            if self._dedup.seen(message.id) and not msg.retain:
                raise Dropped("duplicate", f"message id {message.id} was already handled")
        except Dropped as drop:
            self.counters.inc(drop.reason)
            log.warning("dropped a message on %s: %s; payload %s", raw_topic, drop, truncate(payload))
            if drop.reason in ("invalid", "wrong_type") and ids is not None:
                self._report_invalid(routes, ids, raw_topic, payload, drop.detail)
            return
        received = ReceivedMessage(routes[0].topic.name, ids, message, raw_topic, msg.qos, bool(msg.retain))
        for route in routes:
            try:
                route.handler(received)
                self.counters.inc("handled")
            except Exception:  # boundary: one bad handler never stops the others
                self.counters.inc("handler_error")
                log.exception("handler %s failed on %s (message %s)",
                              getattr(route.handler, "__qualname__", route.handler), raw_topic, message.id)
