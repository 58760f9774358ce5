"""Broker behaviour, the same tests against the embedded broker and Mosquitto.

Each amqtt 0.12.1 defect of DESIGN.md section 4 has a test here (numbered as in
issue 2), plus authentication and ACL checks. Where MQTT 3.1.1 lets a broker
choose (SUBACK 0x80 or a granted subscription that delivers nothing; PUBACK or a
closed connection for a refused publish, MQTT-3.3.5-2), the tests accept both and
check what matters: nothing outside the ACL is ever delivered.
"""

from __future__ import annotations

import queue
import time

import pytest

from fabbus.topics import contract
from helpers import (CLOUD, DET_L1_D1, DET_L1_D2, EDGE_L1, EDGE_L2, STANDARD_USERNAMES, Received, connect,
                     expect_message, expect_messages, expect_no_message)
from raw_mqtt import (PINGRESP, PUBACK, PUBLISH, SUBACK_FAILURE, ConnectionClosed, RawClient, connect_packet,
                      publish_packet, puback_packet)

C = contract()
L1 = {"site": "s1", "line": "l1"}
L2 = {"site": "s1", "line": "l2"}
NOT_AUTHORIZED = (4, 5)  # CONNACK: bad username or password / not authorized
GRANTED_OR_REFUSED = (0, 1, SUBACK_FAILURE)
# Seconds a silent client may outlive 1.5 x keep-alive. Mosquitto 2.0.11 checks keep-alives
# coarsely (measured: keep-alive 1/2/3/4 s dropped after 5.3/6.0/6.0/12.0 s); ours is held to the issue.
KEEPALIVE_SLACK = {"embedded": 1.5, "mosquitto": 7.0}


def topic(name: str, **ids: str) -> str:
    return C.topic(name).format(**ids)


def line_of(received: Received) -> str | None:
    m = C.match(received.topic)
    return m[1].get("line") if m else None


def drain(q: queue.Queue[Received], within: float = 1.0) -> list[Received]:
    """Everything that arrives within ``within`` seconds (a bounded negative window)."""
    out = []
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(q.get(timeout=left))
        except queue.Empty:
            break
    return out


# ---- authentication

@pytest.mark.parametrize("who", ["wrong-password", "unknown-user", "anonymous"])
def test_bad_credentials_refused(broker, who):
    creds = {"wrong-password": (EDGE_L1, "not-" + broker.users[EDGE_L1]),
             "unknown-user": ("s9/l9", broker.users[EDGE_L1]),
             "anonymous": (None, None)}[who]
    with RawClient(broker.host, broker.port) as r:
        _, rc = r.connect("intruder", username=creds[0], password=creds[1])
        assert rc in NOT_AUTHORIZED, f"CONNACK return code {rc}"
        assert r.closed_by_peer(3.0), "a refused client must be disconnected"


def test_all_standard_users_can_connect(broker):
    for name in STANDARD_USERNAMES:
        with RawClient(broker.host, broker.port) as r:
            assert r.connect(f"ok-{name.replace('/', '-')}", username=name, password=broker.users[name])[1] == 0


# ---- 1) keep-alive enforced, last will published

def test_silent_client_dropped_and_will_published(broker):
    will_topic = topic("edge_state", **L1)
    with connect(broker, CLOUD) as cloud:
        assert cloud.subscribe(C.topic("edge_state").filter(), qos=1) == 1
        with RawClient(broker.host, broker.port) as silent:
            assert silent.connect("edge-l1", username=EDGE_L1, password=broker.users[EDGE_L1], keepalive=2,
                                  will=(will_topic, b"offline", 1, False))[1] == 0
            t0 = time.monotonic()
            limit = 1.5 * 2 + KEEPALIVE_SLACK[broker.kind]
            assert silent.closed_by_peer(timeout=limit), f"silent client not dropped within {limit:.1f} s"
            elapsed = time.monotonic() - t0
        assert elapsed >= 1.9, f"dropped after {elapsed:.1f} s, before its 2 s keep-alive ran out"
        will = expect_message(cloud.messages, timeout=3.0)
        assert (will.topic, will.payload) == (will_topic, b"offline")


def test_pinging_client_stays_connected(broker):
    with RawClient(broker.host, broker.port) as r:
        assert r.connect("edge-l1", username=EDGE_L1, password=broker.users[EDGE_L1], keepalive=2)[1] == 0
        t0 = time.monotonic()
        for i in range(1, 5):  # about 4 s = 2 x keep-alive, pinging every second
            r.send(bytes([0xC0, 0x00]))
            assert r.read(timeout=2.0).type == PINGRESP
            time.sleep(max(0.0, t0 + i - time.monotonic()))
        r.send(bytes([0xC0, 0x00]))
        assert r.read(timeout=2.0).type == PINGRESP, "a client that pings in time was dropped"


# ---- 2) persistent sessions for authenticated clients

def test_persistent_session_gets_qos1_published_while_offline(broker):
    with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        assert edge.subscribe(C.topic("edge_command").filter(**L1), qos=1) == 1
        assert edge.subscribe(C.topic("detector_state").filter(**L1), qos=1) == 1
        edge.disconnect()
    with connect(broker, CLOUD) as cloud:
        for i in range(3):
            cloud.publish(topic("edge_command", **L1), f"cmd-{i}", qos=1)
        cloud.publish(topic("detector_state", **L1, det="d1"), b"online", qos=1, retain=True)
    with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        assert edge.session_present, "session not kept for a clean_session=false client"
        got = expect_messages(edge.messages, 4, timeout=5.0)
        expect_no_message(edge.messages, within=0.5)
    assert [m.payload for m in got] == [b"cmd-0", b"cmd-1", b"cmd-2", b"online"]
    assert all(m.qos == 1 and not m.retain for m in got), got


# ---- 3) unacknowledged QoS 1 redelivered after reconnect

def test_unacknowledged_qos1_redelivered(broker):
    creds = {"username": EDGE_L1, "password": broker.users[EDGE_L1], "clean_session": False}
    with RawClient(broker.host, broker.port) as r:
        assert r.connect("edge-l1", **creds)[1] == 0
        assert r.subscribe([(C.topic("edge_command").filter(**L1), 1)]) == [1]
        with connect(broker, CLOUD) as cloud:
            cloud.publish(topic("edge_command", **L1), b"train", qos=1)
        first = r.read_type(PUBLISH)
        assert first.qos == 1 and first.publish_fields()[2] == b"train"
    # socket closed without PUBACK
    with RawClient(broker.host, broker.port) as r:
        present, rc = r.connect("edge-l1", **creds)
        assert (present, rc) == (True, 0)
        again = r.read_type(PUBLISH, timeout=5.0)
        t, pid, payload = again.publish_fields()
        assert (t, payload, again.qos) == (topic("edge_command", **L1), b"train", 1)
        r.send(puback_packet(pid) + bytes([0xE0, 0x00]))  # PUBACK, DISCONNECT
    with RawClient(broker.host, broker.port) as r:
        assert r.connect("edge-l1", **creds) == (True, 0)
        with pytest.raises(TimeoutError):
            r.read_type(PUBLISH, timeout=1.0)  # acknowledged: not sent again


# ---- 4) retained messages only for own subscriptions, only where the ACL lets it read

def test_retained_messages_respect_own_subscriptions_and_acl(broker):
    with connect(broker, CLOUD) as cloud:
        assert cloud.subscribe(f"{C.prefix}/#", qos=1) == 1  # another client's wide subscription
        for det in ("d1", "d2"):
            cloud.publish(topic("detector_state", **L2, det=det), b"l2", qos=1, retain=True)
            cloud.publish(topic("delivery_status", **L2, det=det, brand="b1"), b"l2", qos=1, retain=True)
        cloud.publish(topic("detector_status", **L2, det="d1"), b"l2", qos=1, retain=True)
        cloud.publish(topic("detector_state", **L1, det="d1"), b"l1", qos=1, retain=True)
        with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
            assert edge.subscribe(C.topic("detector_state").filter(**L1)) == 1
            own = expect_message(edge.messages)
            assert (own.topic, own.payload, own.retain) == (topic("detector_state", **L1, det="d1"), b"l1", True)
            for wide in ("#", f"{C.prefix}/#", C.topic("detector_state").filter(),
                         C.topic("detector_state").filter(**L2), C.topic("delivery_status").filter(**L2)):
                assert edge.subscribe(wide) in GRANTED_OR_REFUSED
            got = drain(edge.messages, within=1.5)
            edge.disconnect()
        assert [m for m in got if line_of(m) != "l1"] == [], "line-1 edge received another line's retained messages"
        with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
            again = drain(edge.messages, within=1.0)
        assert [m for m in again if line_of(m) != "l1"] == [], "retained messages of others sent on reconnect"


# ---- 5) delivery QoS = min(publish QoS, subscription QoS)

def test_delivery_qos_is_minimum_of_publish_and_subscription(broker):
    cmd = topic("edge_command", **L1)
    with connect(broker, EDGE_L1) as sub1, connect(broker, EDGE_L1) as sub0, connect(broker, CLOUD) as cloud:
        assert sub1.subscribe(cmd, qos=1) == 1
        assert sub0.subscribe(cmd, qos=0) == 0
        cloud.publish(cmd, b"q0", qos=0)
        cloud.publish(cmd, b"q1", qos=1)
        got1 = expect_messages(sub1.messages, 2)
        got0 = expect_messages(sub0.messages, 2)
    assert [(m.payload, m.qos) for m in got1] == [(b"q0", 0), (b"q1", 1)]
    assert [(m.payload, m.qos) for m in got0] == [(b"q0", 0), (b"q1", 0)]


# ---- 6) retained messages and persistent sessions survive a restart

def test_retained_and_sessions_survive_restart(broker):
    with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        assert edge.subscribe(C.topic("edge_command").filter(**L1), qos=1) == 1
        edge.disconnect()
    with connect(broker, CLOUD) as cloud:
        cloud.publish(topic("detector_state", **L1, det="d1"), b"online", qos=1, retain=True)
        cloud.publish(topic("edge_command", **L1), b"queued", qos=1)
    broker.restart()
    with connect(broker, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        assert edge.session_present, "persistent session lost in the restart"
        m = expect_message(edge.messages)
        assert (m.topic, m.payload, m.qos, m.retain) == (topic("edge_command", **L1), b"queued", 1, False)
    with connect(broker, CLOUD) as cloud:
        assert cloud.subscribe(C.topic("detector_state").filter(), qos=1) == 1
        m = expect_message(cloud.messages)
        assert (m.topic, m.payload, m.retain) == (topic("detector_state", **L1, det="d1"), b"online", True)


# ---- 7) a reconnect storm: 200 clients at once

def _connect_all(broker, n: int, deadline_s: float) -> float:  # noqa: ANN001
    names = STANDARD_USERNAMES
    clients = [RawClient(broker.host, broker.port, timeout=deadline_s) for _ in range(n)]
    try:
        t0 = time.monotonic()
        for i, r in enumerate(clients):
            user = names[i % len(names)]
            r.send(connect_packet(f"storm-{i}", username=user, password=broker.users[user], clean_session=False))
        codes = [r.read(timeout=max(0.0, t0 + deadline_s - time.monotonic())).body[1] for r in clients]
        elapsed = time.monotonic() - t0
    finally:
        for r in clients:
            r.close()
    assert codes == [0] * n, f"refused: {[c for c in codes if c]}"
    return elapsed


def test_reconnect_storm_of_200_clients(broker):
    first = _connect_all(broker, 200, deadline_s=20.0)
    second = _connect_all(broker, 200, deadline_s=20.0)
    assert max(first, second) < 20.0, f"storm took {first:.1f} s then {second:.1f} s"


# ---- ACL: subscriptions and publishes outside a node's scope

def test_subscription_outside_acl_receives_nothing(broker):
    with connect(broker, EDGE_L1) as edge1, connect(broker, EDGE_L2) as edge2, connect(broker, CLOUD) as cloud:
        assert edge1.subscribe(topic("edge_command", **L2)) in GRANTED_OR_REFUSED
        assert edge1.subscribe(topic("task_status", **L2, task="t1")) in GRANTED_OR_REFUSED
        assert edge2.subscribe(topic("edge_command", **L2)) == 1
        cloud.publish(topic("edge_command", **L2), b"for-l2", qos=1)
        cloud.publish(topic("task_status", **L2, task="t1"), b"status", qos=1)
        assert expect_message(edge2.messages).payload == b"for-l2"  # it was delivered where allowed
        expect_no_message(edge1.messages, within=1.0)


def _publish_refused(broker, packet_bytes: bytes, packet_id: int) -> None:  # noqa: ANN001
    """A refused QoS 1 publish: PUBACK (Mosquitto) or the connection closed, both allowed by MQTT-3.3.5-2."""
    with RawClient(broker.host, broker.port) as r:
        assert r.connect(f"edge-pub-{packet_id}", username=EDGE_L1, password=broker.users[EDGE_L1])[1] == 0
        r.send(packet_bytes)
        try:
            p = r.read(timeout=3.0)
        except ConnectionClosed:
            return
        assert (p.type, p.body) == (PUBACK, packet_id.to_bytes(2, "big")), p


def test_publish_outside_acl_not_delivered(broker):
    denied = [topic("task_status", **L2, task="t1"),  # another line
              topic("edge_command", **L1),  # own line, but only the cloud writes commands
              topic("detector_state", **L1, det="d1")]  # a detector's topic
    with connect(broker, CLOUD) as cloud:
        assert cloud.subscribe(f"{C.prefix}/#", qos=1) == 1
        for pid, t in enumerate(denied, 1):
            _publish_refused(broker, publish_packet(t, b"forged", qos=1, packet_id=pid), pid)
        with connect(broker, EDGE_L1) as edge:
            edge.publish(topic("task_status", **L1, task="t1"), b"allowed", qos=1)
        m = expect_message(cloud.messages)
        assert (m.topic, m.payload) == (topic("task_status", **L1, task="t1"), b"allowed")
        expect_no_message(cloud.messages, within=0.5)


def test_detector_reads_only_its_own_delivery_topics(broker):
    own = C.topic("delivery_manifest").filter(**L1, det="d1")
    with connect(broker, DET_L1_D1) as d1, connect(broker, DET_L1_D2) as d2, connect(broker, EDGE_L1) as edge:
        assert d1.subscribe(own) == 1
        assert d1.subscribe(C.topic("delivery_manifest").filter(**L1, det="d2")) in GRANTED_OR_REFUSED
        assert d1.subscribe(C.topic("delivery_manifest").filter(**L1)) in GRANTED_OR_REFUSED
        assert d1.subscribe(topic("edge_command", **L1)) in GRANTED_OR_REFUSED
        assert d2.subscribe(C.topic("delivery_manifest").filter(**L1, det="d2")) == 1
        edge.publish(topic("delivery_manifest", **L1, det="d2", brand="b1"), b"for-d2", qos=1)
        edge.publish(topic("delivery_manifest", **L1, det="d1", brand="b1"), b"for-d1", qos=1)
        with connect(broker, CLOUD) as cloud:
            cloud.publish(topic("edge_command", **L1), b"cmd", qos=1)
        assert expect_message(d2.messages).payload == b"for-d2"
        got = expect_message(d1.messages)
        assert (got.topic, got.payload) == (topic("delivery_manifest", **L1, det="d1", brand="b1"), b"for-d1")
        expect_no_message(d1.messages, within=1.0)
