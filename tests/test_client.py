"""The bus client (fabbus.client) against real brokers: the embedded one and Mosquitto.

No mocks: every test talks MQTT to a broker from the ``broker`` fixture. Raw
payloads that the typed client refuses to send come from a plain paho client
(tests/helpers.py), as a misbehaving node would send them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.harness import free_port
from fabbus.client import AuthenticationError, BrokerUnreachable, BusClient, MqttConfig, ReceivedMessage
from fabbus.errors import ConfigError, ContractError, DeliveryTimeout, MessageError, NotConnectedError
from fabbus.messages import CancelCommand, EpochMetrics, NodeState, TaskStatus, TrainingProgress, encode
from fabbus.mqtt_config import TlsConfig
from fabbus.topics import contract
from helpers import CLOUD, EDGE_L1, EDGE_L2, connect, expect_message, expect_no_message, wait_for

L1 = {"site": "s1", "line": "l1"}
L2 = {"site": "s1", "line": "l2"}


class Inbox:
    """A handler that queues what it receives."""

    def __init__(self) -> None:
        self.q: queue.Queue[ReceivedMessage] = queue.Queue()

    def __call__(self, msg: ReceivedMessage) -> None:
        self.q.put(msg)

    def next(self, timeout: float = 5.0) -> ReceivedMessage:
        return expect_message(self.q, timeout)


def config(broker: Any, username: str | None, **kw: Any) -> MqttConfig:
    opts: dict[str, Any] = {"host": broker.host, "port": broker.port, "username": username,
                            "password": broker.users[username] if username else None,
                            "reconnect_min_delay": 0.1, "reconnect_max_delay": 1.0, "connect_timeout": 10.0}
    return MqttConfig(**{**opts, **kw})


def cloud(broker: Any, node: str = "app1", **kw: Any) -> BusClient:
    return BusClient(config(broker, CLOUD, **kw), "cloud", {"node": node})


def edge(broker: Any, ids: dict[str, str] = L1, **kw: Any) -> BusClient:
    username = EDGE_L1 if ids == L1 else EDGE_L2
    return BusClient(config(broker, None, password=broker.users[username], **kw), "edge", ids)


def status(task: str = "t1", state: str = "ACCEPTED") -> TaskStatus:
    return TaskStatus(task=task, kind="train", state=state)


def metrics(epoch: int = 1) -> EpochMetrics:
    return EpochMetrics(task="t1", epoch=epoch, epochs=5, loss=0.5, accuracy=0.9, duration_s=1.0)


@pytest.fixture(autouse=True)
def no_dispatch_crash(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test in which the client's own dispatch code (not a handler) raised."""
    yield
    crashes = [r for r in caplog.records if r.getMessage().startswith("unexpected error while dispatching")]
    assert not crashes, crashes


# ---- birth, last will, offline state -----------------------------------------------------------

def test_birth_is_retained_and_close_publishes_offline_state(broker: Any) -> None:
    with edge(broker) as e:
        with cloud(broker) as c:
            inbox = Inbox()
            c.subscribe("edge_state", inbox).wait(5)
            birth = inbox.next()
            assert birth.retain and birth.qos == 1
            assert birth.topic_name == "edge_state" and birth.ids == L1
            assert isinstance(birth.body, NodeState)
            assert birth.body.online and birth.body.role == "edge" and birth.body.node == "s1/l1"
            assert birth.message.sender == "s1/l1"
            e.close()
            offline = inbox.next()
            assert not offline.body.online and offline.body.reason == "shutdown"
        with cloud(broker, "app2") as late:  # the offline state is retained too
            inbox = Inbox()
            late.subscribe("edge_state", inbox, site="s1", line="l1")
            assert inbox.next().body.online is False


_KILLED_EDGE = """
import sys, time
from fabbus.client import BusClient, MqttConfig
client = BusClient(MqttConfig(host=sys.argv[1], port=int(sys.argv[2])), "edge", {"site": "s1", "line": "l2"})
client.connect()
time.sleep(120)
"""


def test_last_will_fires_when_the_process_is_killed(broker: Any) -> None:
    with cloud(broker) as c:
        inbox = Inbox()
        c.subscribe("edge_state", inbox, line="l2").wait(5)
        env = {**os.environ, "FAB_MQTT_PASSWORD": broker.users[EDGE_L2]}  # the password comes from the environment
        proc = subprocess.Popen([sys.executable, "-c", _KILLED_EDGE, broker.host, str(broker.port)], env=env,
                                stdin=subprocess.DEVNULL)
        try:
            birth = inbox.next(timeout=30)
            assert birth.body.online and birth.ids == L2
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            will = inbox.next(timeout=10)
        finally:
            proc.kill()
            proc.wait()
        assert will.ids == L2 and will.body.online is False and will.body.reason == "connection lost"
        assert will.message.id != birth.message.id


class CuttableLink:
    """A TCP forwarder to the broker whose connections a test can cut, as a failing network would."""

    def __init__(self, broker: Any) -> None:
        self.target = (broker.host, broker.port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.1)
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.running = True
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while self.running:
            try:
                near, _ = self.server.accept()
            except TimeoutError:
                continue
            far = socket.create_connection(self.target)
            self.sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                t = threading.Thread(target=self._pipe, args=(src, dst), daemon=True)
                self.threads.append(t)
                t.start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Both ends see their connection end with no MQTT DISCONNECT."""
        for s in list(self.sockets):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.running = False
        self._accepting.join()
        self.server.close()
        self.cut()
        for t in self.threads:
            t.join()
        for s in self.sockets:
            s.close()


def test_last_will_on_network_loss_and_again_after_reconnect(broker: Any) -> None:
    link = CuttableLink(broker)
    try:
        with cloud(broker) as c, edge(broker, port=link.port) as e:
            inbox = Inbox()
            c.subscribe("edge_state", inbox).wait(5)
            states = [inbox.next()]
            for _ in range(2):
                link.cut()
                states.append(inbox.next(timeout=10))  # the will
                states.append(inbox.next(timeout=10))  # the birth after reconnecting
            e.wait_connected(5)
    finally:
        link.close()
    assert [(m.body.online, m.body.reason) for m in states] == [
        (True, ""), (False, "connection lost"), (True, ""), (False, "connection lost"), (True, "")]
    assert len({m.message.id for m in states}) == 5  # a fresh id per will: none dropped as a duplicate
    assert e.stats["connects"] == 3


# ---- typed publish / subscribe -----------------------------------------------------------------

@pytest.mark.parametrize("dispatch", ["thread", "inline"])
def test_typed_round_trip_with_qos1_delivery(broker: Any, dispatch: str) -> None:
    with cloud(broker, dispatch=dispatch) as c, edge(broker) as e:
        inbox = Inbox()
        c.subscribe("task_status", inbox).wait(5)
        delivery = e.publish("task_status", status(), correlation_id="t1", task="t1")
        delivery.wait(5)
        assert delivery.delivered
        got = inbox.next()
        assert got.topic_name == "task_status" and got.ids == {**L1, "task": "t1"}
        assert got.topic == contract().topic("task_status").format(**L1, task="t1")
        assert got.body == status() and got.message.correlation_id == "t1" and got.message.sender == "s1/l1"
        assert got.qos == 1 and got.retain is False
        with pytest.raises(dataclasses.FrozenInstanceError):
            got.qos = 0  # type: ignore[misc]
        e.publish("task_progress", TrainingProgress(task="t1", epoch=1, epochs=2, batch=1, batches=4, percent=12.5),
                  task="t1").wait(5)  # QoS 0: waits until written
        assert c.stats["handled"] == 1


def test_subscriptions_made_before_connect_are_granted_on_connect(broker: Any) -> None:
    c = cloud(broker)
    inbox = Inbox()
    subscription = c.subscribe("task_metrics", inbox, site="s1", line="l1")
    with c, edge(broker) as e:  # connect() returns once the subscription is granted
        subscription.wait(0)
        e.publish("task_metrics", metrics(), task="t1").wait(5)
        assert inbox.next().ids == {**L1, "task": "t1"}


def test_command_to_edge_and_reply_from_the_handler(broker: Any) -> None:
    with cloud(broker) as c, edge(broker) as e:
        statuses = Inbox()
        c.subscribe("task_status", statuses).wait(5)

        def on_edge_command(msg: ReceivedMessage) -> None:
            assert isinstance(msg.body, CancelCommand)
            e.publish("task_status", TaskStatus(task=msg.body.task, kind="cancel", state="ACCEPTED"),
                      correlation_id=msg.message.correlation_id, task=msg.body.task).wait(5)

        e.subscribe("edge_command", on_edge_command).wait(5)  # site and line default to the edge's own
        c.publish("edge_command", CancelCommand(task="t9"), correlation_id="t9", **L1).wait(5)
        reply = statuses.next()
        assert reply.ids["task"] == "t9" and reply.message.correlation_id == "t9" and reply.body.kind == "cancel"
        assert e.stats["handler_error"] == 0


# ---- validation at the boundary ----------------------------------------------------------------

def test_bad_payloads_are_counted_and_dropped(broker: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fabbus")
    topic = contract().topic("task_metrics").format(**L1, task="t1")
    good = json.loads(encode(metrics(), sender="s1/l1"))
    bad = {
        "malformed": [b"{not json", b"\xff\xfe", b"NaN"],
        "wrong_type": [encode(status(), sender="s1/l1"), json.dumps({**good, "type": "NoSuchType"}).encode()],
        "invalid": [json.dumps({**good, "body": {**good["body"], "epoch": -1}}).encode(),
                    json.dumps({k: v for k, v in good.items() if k != "id"}).encode(), b"[1, 2]"],
        "oversized": [json.dumps({**good, "sender": "x" * 3000}).encode()],
    }
    with cloud(broker, max_payload_bytes=2048) as c, connect(broker, EDGE_L1) as raw:
        inbox = Inbox()
        c.subscribe("task_metrics", inbox).wait(5)
        for payloads in bad.values():
            for payload in payloads:
                raw.publish(topic, payload, qos=1)
        raw.publish(topic, encode(metrics(2), sender="s1/l1"), qos=1)
        assert inbox.next().body.epoch == 2  # the next valid message is still handled
        expect_no_message(inbox.q, 0.2)
        stats = c.stats
        assert {reason: stats[reason] for reason in bad} == {reason: len(p) for reason, p in bad.items()}
        assert stats["handled"] == 1 and stats["received"] == 10
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("fabbus")]
    oversized = next(m for m in logged if "oversized" in m)
    assert topic in oversized and "bytes)" in oversized and len(oversized) < 1000  # payload truncated in the log


def test_duplicate_message_ids_are_dropped(broker: Any) -> None:
    with cloud(broker) as c, edge(broker) as e:
        inbox = Inbox()
        c.subscribe("task_metrics", inbox).wait(5)
        e.publish("task_metrics", metrics(1), msg_id="m-1", task="t1").wait(5)
        e.publish("task_metrics", metrics(1), msg_id="m-1", task="t1").wait(5)  # a QoS 1 redelivery
        e.publish("task_metrics", metrics(2), task="t1").wait(5)
        assert [inbox.next().body.epoch, inbox.next().body.epoch] == [1, 2]
        expect_no_message(inbox.q, 0.2)
        assert c.stats["duplicate"] == 1


def test_retained_state_reaches_a_handler_subscribed_later(broker: Any) -> None:
    with edge(broker) as e, cloud(broker) as c:
        e.publish("task_status", status(), task="t1").wait(5)
        first, second = Inbox(), Inbox()
        c.subscribe("task_status", first).wait(5)
        got = first.next()
        c.subscribe("task_status", second).wait(5)
        again = second.next()  # the broker replays it: not taken for a duplicate
        assert again.retain and again.message.id == got.message.id


@pytest.mark.parametrize("dispatch", ["thread", "inline"])
def test_a_failing_handler_never_stops_the_others(broker: Any, dispatch: str) -> None:
    calls: list[int] = []

    def on_task_metrics(msg: ReceivedMessage) -> None:
        calls.append(msg.body.epoch)
        if msg.body.epoch == 1:
            raise RuntimeError("handler bug")

    with cloud(broker, dispatch=dispatch) as c, edge(broker) as e:
        inbox = Inbox()
        c.subscribe("task_metrics", on_task_metrics)
        c.subscribe("task_metrics", inbox).wait(5)
        for epoch in (1, 2):
            e.publish("task_metrics", metrics(epoch), task="t1").wait(5)
        assert [inbox.next().body.epoch, inbox.next().body.epoch] == [1, 2]
        wait_for(lambda: calls == [1, 2], what="both messages at the failing handler")
        assert c.stats["handler_error"] == 1 and c.connected


def test_cleared_retained_messages_are_ignored_quietly(broker: Any) -> None:
    progress = TrainingProgress(task="t1", epoch=1, epochs=2, batch=1, batches=4, percent=12.5)
    with cloud(broker) as c, edge(broker) as e:
        inbox = Inbox()
        c.subscribe("task_progress", inbox).wait(5)
        e.publish("task_progress", progress, task="t1").wait(5)
        assert inbox.next().body == progress
        e.clear_retained("task_progress", task="t1").wait(5)
        e.publish("task_metrics", metrics(), task="t1").wait(5)  # QoS 1 after the clear: it has arrived too
        wait_for(lambda: c.stats["retained_clear"] == 1, what="the clear")
        assert c.stats["malformed"] == c.stats["invalid"] == 0
        with cloud(broker, "app2") as late:
            late_inbox = Inbox()
            late.subscribe("task_progress", late_inbox).wait(5)
            expect_no_message(late_inbox.q, 0.3)


# ---- connection: reconnect, queueing, refused login ----------------------------------------------

def test_reconnect_and_resubscribe_after_a_broker_restart(broker: Any) -> None:
    with cloud(broker) as c, edge(broker) as e:
        inbox = Inbox()
        c.subscribe("task_metrics", inbox).wait(5)
        broker.restart()
        for client in (c, e):
            wait_for(lambda client=client: client.stats["connects"] == 2, timeout=15, what="reconnect")
            client.wait_connected(5)
        e.publish("task_metrics", metrics(3), task="t1").wait(5)
        assert inbox.next().body.epoch == 3  # the subscription was renewed (clean session)
        assert c.stats["disconnects"] == 1


def test_qos1_publish_while_disconnected_is_queued_and_sent_on_reconnect(broker: Any) -> None:
    with edge(broker) as e:
        broker.stop()
        wait_for(lambda: not e.connected, what="the edge to notice")
        delivery = e.publish("task_status", status(state="IN_PROGRESS"), task="t5")
        with pytest.raises(DeliveryTimeout):
            delivery.wait(0.3)
        broker.start()
        delivery.wait(15)
        with cloud(broker) as c:
            inbox = Inbox()
            c.subscribe("task_status", inbox, site="s1", line="l1", task="t5")
            assert inbox.next().body.state == "IN_PROGRESS"


def test_wrong_password_is_a_clear_error_without_retries(broker: Any) -> None:
    client = BusClient(config(broker, CLOUD, password="wrong"), "cloud", {"node": "app1"})
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="refused cloud app1.*user 'cloud'"):
        client.connect()
    assert time.monotonic() - started < 5
    time.sleep(0.5)  # retries would show up as further failures
    assert client.stats["connect_failures"] == 1 and isinstance(client.error, AuthenticationError)
    with pytest.raises(AuthenticationError):
        client.wait_connected(1)
    client.close()


def test_unreachable_broker_is_reported_as_such() -> None:
    port = free_port()
    client = BusClient(MqttConfig(port=port, username=CLOUD, password="x", reconnect_min_delay=0.1), "cloud",
                       {"node": "app1"})
    with pytest.raises(BrokerUnreachable, match=f"127.0.0.1:{port}.*Connection refused"):
        client.connect(timeout=1.0)
    client.close()


# ---- the contract is enforced before anything is sent --------------------------------------------

def test_the_contract_is_checked_before_sending() -> None:
    e = BusClient(MqttConfig(), "edge", L1)
    with pytest.raises(ContractError, match="may not publish edge_command"):
        e.publish("edge_command", CancelCommand(task="t1"))
    with pytest.raises(ContractError, match="outside its scope"):
        e.publish("task_status", status(), line="l2", task="t1")
    with pytest.raises(MessageError, match="TaskStatus"):
        e.publish("task_metrics", status(), task="t1")
    with pytest.raises(MessageError):
        e.publish("task_status", {"task": "t1"}, task="t1")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="unknown topic"):
        e.publish("no_such_topic", status())
    with pytest.raises(ContractError, match="may not subscribe edge_state"):
        e.subscribe("edge_state", Inbox())
    d = BusClient(MqttConfig(), "detector", {**L1, "det": "d1"})
    with pytest.raises(ContractError, match="may not subscribe"):
        d.subscribe("edge_command", Inbox())
    with pytest.raises(ContractError, match="missing ids"):
        BusClient(MqttConfig(), "edge", {"site": "s1"})
    e.close()
    with pytest.raises(NotConnectedError, match="closed"):
        e.publish("task_status", status(), task="t1")
    d.close()



def test_config_password_from_the_environment_and_strict_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAB_MQTT_PASSWORD", "from-env")
    assert MqttConfig().resolved_password() == "from-env"
    assert MqttConfig(password="explicit").resolved_password() == "explicit"
    assert "explicit" not in repr(MqttConfig(password="explicit"))
    with pytest.raises(ValueError, match="hots"):
        MqttConfig(hots="x")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsConfig(cert_file="client.crt")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mqtt.tls: cannot load /nonexistent/ca.pem"):
        BusClient(MqttConfig(tls=TlsConfig(ca_file="/nonexistent/ca.pem")), "cloud", {"node": "app1"})  # type: ignore[arg-type]
