"""The bus client every process uses: a thin, typed wrapper over paho-mqtt 2.

    client = BusClient(MqttConfig(port=1884), "edge", {"site": "s1", "line": "l1"})
    client.subscribe("edge_command", on_edge_command)       # site/line default to the node's own
    with client:                                            # connect, birth; close sends offline state
        client.publish("task_status", status, task="t1").wait(5)

Behaviour:
- Birth and will: the node's state topic (``<role>_state``) carries a retained
  NodeState online=true after every connect; the same topic with online=false is
  the last will (re-armed with a fresh message id before each reconnect) and is
  published retained by ``close()``.
- Connecting: ``connect()`` waits for a successful CONNACK and the renewal of every
  subscription. A refused login raises AuthenticationError at once, with no retries;
  an unreachable broker is retried with exponential backoff (BrokerUnreachable after
  ``connect_timeout``; retries go on). Lost connections are retried forever.
- Publishing while disconnected: QoS 1 messages are queued by paho (in memory,
  unbounded) and sent on reconnect; ``Delivery.wait()`` returns once acknowledged.
  QoS 0 messages are dropped (``wait()`` raises NotConnectedError).
- Receiving: payloads are validated at the boundary (fabbus.inbound); bad ones are
  logged with topic and a truncated payload, counted in ``stats`` and dropped;
  duplicate message ids are dropped, except retained replays (retained topics are
  state, replayed on every subscribe, so their handlers must be idempotent).
  Handlers run on one worker thread in arrival order (``dispatch: thread``, the
  default) or on paho's network thread (``dispatch: inline``). QoS 1 messages are
  acknowledged only after their handlers ran, so a crash means redelivery, never loss.
  A handler exception is logged and counted; other handlers still run.
- Threads: publish, subscribe, clear_retained, stats and close may be called from
  any thread, handlers included.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from fabbus.acks import (CLOSED, AckTracker, AuthenticationError, BrokerUnreachable, ConnectRefused, Delivery,
                         SubscribeRefused, Subscription, refusal, unreachable)
from fabbus.errors import ContractError, DeliveryTimeout, MessageError, NotConnectedError
from fabbus.identity import NodeIdentity
from fabbus.inbound import Counters, Dispatcher, Handler, InvalidHandler, InvalidMessage, ReceivedMessage, Route
from fabbus.messages import Body, encode
from fabbus.mqtt_config import MqttConfig
from fabbus.topics import Contract, Topic

__all__ = ["AuthenticationError", "BrokerUnreachable", "BusClient", "ConnectRefused", "Delivery", "InvalidMessage",
           "MqttConfig", "ReceivedMessage", "SubscribeRefused", "Subscription"]

log = logging.getLogger(__name__)


class BusClient:
    """One process's connection to the bus, as ``role`` with its ``node_ids``."""

    def __init__(self, config: MqttConfig, role: str, node_ids: dict[str, str], *, sender: str | None = None,
                 version: str = "", contract_: Contract | None = None) -> None:
        self.config = config
        self.identity = NodeIdentity.create(role, node_ids, contract_)
        self.role, self.node, self.contract = role, self.identity.node, self.identity.contract
        self.sender = sender or self.node
        self.version = version
        self._counters = Counters()
        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._started = self._connected = self._ready = self._closed = False
        self._error: NotConnectedError | None = None
        self._renewing: set[int | None] = set()  # resubscriptions not yet acknowledged
        self._state_lock = threading.Lock()  # orders birth and offline state; paho may be called under it
        self._generation = 0
        self._pubacks, self._subacks = AckTracker(), AckTracker()
        self._mqtt = self._make_paho()
        self._dispatcher = Dispatcher(self._counters, max_payload_bytes=config.max_payload_bytes,
                                      dedup_window=config.dedup_window, threaded=config.dispatch == "thread",
                                      done=self._acknowledge, name=f"fabbus-{self.client_id}")

    # ---- setup

    def _make_paho(self) -> mqtt.Client:
        client_id = self.config.client_id or self.identity.default_client_id
        username = self.config.username or (self.node if self.identity.scope_ids else None)
        self._tls = self.config.tls.context() if self.config.tls is not None else None
        c = self.config.paho_client(client_id, username, self._tls)
        c.on_connect, c.on_disconnect, c.on_connect_fail = self._on_connect, self._on_disconnect, self._on_connect_fail
        c.on_message, c.on_publish, c.on_subscribe = self._on_message, self._on_publish, self._on_subscribe
        self.username, self.client_id = username, client_id
        return c

    def _arm_will(self) -> None:
        """The last will for the next connection, with a fresh message id (receivers drop repeats)."""
        payload = encode(self.identity.state(False, "connection lost", self.version), sender=self.sender)
        self._mqtt.will_set(self.identity.state_mqtt_topic, payload, self.identity.state_topic.qos, True)

    def _send_state(self, online: bool, reason: str = "") -> Delivery:
        me = self.identity
        return self._send(me.state_topic, me.state(online, reason, self.version), None, me.ids)

    # ---- lifecycle

    def connect(self, *, wait: bool = True, timeout: float | None = None) -> BusClient:
        """Start connecting (and reconnecting) in the background; by default wait for the CONNACK."""
        with self._lock:
            if self._closed:
                raise NotConnectedError("client is closed")
            start, self._started = not self._started, True
        if start:
            self._dispatcher.start()
            self._arm_will()
            self._mqtt.connect_async(self.config.host, self.config.port, self.config.keepalive)
            self._mqtt.loop_start()
        if wait:
            self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float | None = None) -> None:
        """Block until connected, birth queued and every subscription renewed (SUBACK); raise why not."""
        timeout = self.config.connect_timeout if timeout is None else timeout
        with self._state:
            self._state.wait_for(lambda: self._ready or self._error or self._closed, timeout)
            if self._error is not None:
                raise self._error
            if self._ready:
                return
            if self._closed:
                raise NotConnectedError("client is closed")
            if not self._started:
                raise NotConnectedError("connect() was not called")
        raise unreachable(self.config.host, self.config.port, timeout, self._counters.snapshot()["connect_failures"],
                          self._tls)

    @property
    def connected(self) -> bool:
        return self._ready

    @property
    def error(self) -> NotConnectedError | None:
        """Why the client gave up connecting (a refused login), else None."""
        return self._error

    @property
    def stats(self) -> dict[str, int]:
        """Counters: received, handled, published, each drop reason (fabbus.inbound.COUNTERS), ..."""
        return self._counters.snapshot()

    def close(self, timeout: float | None = None) -> None:
        """Publish the offline state (retained), disconnect cleanly and stop the threads. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed, started = True, self._started
            self._state.notify_all()
        with self._state_lock:  # after the birth, if one is being sent
            offline = self._send_state(False, "shutdown") if self._connected else None
        if offline is not None:
            try:
                offline.wait(self.config.close_timeout if timeout is None else timeout)
            except (NotConnectedError, DeliveryTimeout) as exc:
                log.warning("offline state not acknowledged on close: %s", exc)
        if started:
            self._mqtt.disconnect()
            self._mqtt.loop_stop()
        # paho closes its wake-up socket pair only in __del__, which can run after the sockets' own
        # finalizers when the client dies in a reference cycle (a ResourceWarning): close them now.
        self._mqtt._reset_sockets()
        self._pubacks.fail_all(CLOSED)
        self._subacks.fail_all(CLOSED)
        self._dispatcher.stop()

    def __enter__(self) -> BusClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- publish

    def publish(self, topic_name: str, body: Body, *, correlation_id: str | None = None,
                msg_id: str | None = None, **ids: str) -> Delivery:
        """Publish ``body`` on a contract topic with the contract's QoS and retain flag.

        Ids of the node's own scope (site, line, det) default to the node's ids.
        ContractError if this role may not publish the topic or an id leaves the scope;
        MessageError if the topic does not carry this body type or it is too large.
        """
        topic = self._writable(topic_name)
        if not isinstance(body, Body) or type(body).__name__ not in topic.payload:
            raise MessageError(f"{topic_name} carries {list(topic.payload)}, not {type(body).__name__}")
        return self._send(topic, body, correlation_id, self.identity.topic_ids(topic, ids), msg_id)

    def clear_retained(self, topic_name: str, **ids: str) -> Delivery:
        """Remove the retained message of a retained topic (an empty retained payload)."""
        topic = self._writable(topic_name)
        if not topic.retain:
            raise ContractError(f"{topic_name} is not a retained topic")
        return self._send_raw(topic.format(**self.identity.topic_ids(topic, ids)), b"", topic.qos, True)

    def _writable(self, topic_name: str) -> Topic:
        if self._closed:
            raise NotConnectedError("client is closed")
        topic = self.contract.topic(topic_name)
        self.identity.check(topic, "publish")
        return topic

    def _send(self, topic: Topic, body: Body, correlation_id: str | None, ids: dict[str, str],
              msg_id: str | None = None) -> Delivery:
        payload = encode(body, sender=self.sender, correlation_id=correlation_id, msg_id=msg_id)
        if len(payload) > self.config.max_payload_bytes:
            raise MessageError(f"{topic.name}: {len(payload)} bytes exceed max_payload_bytes "
                               f"({self.config.max_payload_bytes})")
        return self._send_raw(topic.format(**ids), payload, topic.qos, topic.retain)

    def _send_raw(self, mqtt_topic: str, payload: bytes, qos: int, retain: bool) -> Delivery:
        info = self._mqtt.publish(mqtt_topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos == 0:
            return Delivery(mqtt_topic, qos, None, "not connected; QoS 0 message dropped")
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            return Delivery(mqtt_topic, qos, None, f"not queued: {mqtt.error_string(info.rc)}")
        self._counters.inc("published")
        return Delivery(mqtt_topic, qos, self._pubacks.register(info.mid))

    # ---- subscribe

    def subscribe(self, topic_name: str, handler: Handler, *, on_invalid: InvalidHandler | None = None,
                  **ids: str) -> Subscription:
        """Call ``handler(ReceivedMessage)`` for each valid message on a contract topic.

        Ids not given become '+' wildcards, except the node's own scope ids (defaults).
        ``on_invalid(InvalidMessage)`` is called for a readable envelope whose type or
        body is invalid (after it is logged and counted), so the receiver can answer.
        The subscription is renewed on every reconnect. ContractError if the role may not subscribe.
        """
        topic = self.contract.topic(topic_name)
        self.identity.check(topic, "subscribe")
        route = Route(topic, topic.filter(**self.identity.topic_ids(topic, ids)), handler, on_invalid=on_invalid)
        with self._lock:
            self._dispatcher.add(route)
            connected = self._connected
        if connected:
            self._send_subscribe(route)
        return Subscription(topic_name, route.filter, route.pending)

    def _send_subscribe(self, route: Route) -> int | None:
        rc, mid = self._mqtt.subscribe(route.filter, route.topic.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return None
        self._subacks.register(mid, route.pending)
        return mid

    # ---- paho callbacks (network thread): never raise

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused(reason_code)
            return
        with self._lock:
            self._connected = True
            routes = self._dispatcher.routes()
        self._counters.inc("connects")
        log.info("connected to %s:%s as %s (session present: %s)", self.config.host, self.config.port,
                 self.username, flags.session_present)
        mids: set[int | None] = set()
        try:
            with self._state_lock:
                if not self._closed:
                    self._send_state(True)
            mids = {self._send_subscribe(route) for route in routes} - {None}
        except Exception:  # boundary: paho's network thread
            log.exception("birth message or resubscribe failed")
        with self._state:  # ready once every subscription is renewed (SUBACKs come after this returns)
            self._renewing = mids
            self._ready = not mids
            self._state.notify_all()

    def _refused(self, reason_code: Any) -> None:
        self._counters.inc("connect_failures")
        error = refusal(reason_code, f"broker {self.config.host}:{self.config.port} refused {self.role} {self.node} "
                                     f"(user {self.username!r}, client id {self.client_id!r})")
        if error is None:
            log.warning("broker %s:%s refused the connection (%s); retrying", self.config.host, self.config.port,
                        reason_code)
            return
        log.error("%s; not retrying", error)
        with self._state:
            self._error = error
            self._state.notify_all()
        self._mqtt.disconnect()  # ends paho's loop: a refused login is not retried

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._state:
            was_ready, self._connected, self._ready = self._ready, False, False
            self._generation += 1
        if was_ready:
            self._counters.inc("disconnects")
            level = logging.INFO if self._closed else logging.WARNING
            log.log(level, "disconnected from %s:%s (%s)", self.config.host, self.config.port, reason_code)
        if not self._closed and self._error is None:
            try:
                self._arm_will()
            except Exception:  # boundary: paho's network thread
                log.exception("could not re-arm the last will")

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._counters.inc("connect_failures")
        log.debug("connection attempt to %s:%s failed", self.config.host, self.config.port)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        self._pubacks.complete(mid)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            self._counters.inc("subscribe_refused")
            log.error("broker refused a subscription of %s %s: %s", self.role, self.node, refused)
        self._subacks.complete(mid, ", ".join(refused) or None)
        with self._state:
            if mid in self._renewing:
                self._renewing.discard(mid)
                self._ready = self._connected and not self._renewing
                self._state.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._dispatcher.submit(msg, self._generation)

    def _acknowledge(self, msg: mqtt.MQTTMessage, generation: int) -> None:
        """A QoS 1 message is acknowledged once handled (at-least-once), on the connection it came on."""
        if msg.qos > 0 and generation == self._generation and not self._closed:
            self._mqtt.ack(msg.mid, msg.qos)

    def __repr__(self) -> str:
        return f"BusClient({self.role} {self.node} @ {self.config.host}:{self.config.port}, ready={self._ready})"
