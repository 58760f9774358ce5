"""The embedded broker alone: its CLI, bad input, robustness and what Mosquitto has no equivalent for.

The behaviour both brokers share is in test_broker_behaviour.py; here a broker is
a ``python -m broker`` subprocess (broker.harness) whose config a test may change.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from broker.codec import ProtocolError, decode_connect, packet_bounds
from broker.config import BrokerConfig
from broker.harness import BrokerProcess
from broker.server import FabBroker
from fabbus.passwords import read_password_file, verify_password
from helpers import (CLOUD, CLOUD_USERS, EDGE_L1, STANDARD_USERNAMES, PahoClient, Received, connect, expect_message,
                     expect_messages, expect_no_message)
from raw_mqtt import PUBLISH, RawClient, connect_packet, packet, publish_packet, puback_packet

REPO = Path(__file__).resolve().parents[1]
CMD = "fab/v1/s1/l1/edge/cmd"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """``embedded(**overrides)``: an unstarted embedded broker, standard users, config ``overrides``."""
    made: list[BrokerProcess] = []

    def make(**overrides: object) -> BrokerProcess:
        users = {name: secrets.token_urlsafe(16) for name in STANDARD_USERNAMES}
        b = BrokerProcess("embedded", tmp_path / f"broker-{len(made)}", users, CLOUD_USERS)
        cfg = yaml.safe_load(b.config_path.read_text())
        cfg["listener"] |= overrides.pop("listener", {})
        cfg |= overrides
        b.config_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def run_cli(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "broker", *args], cwd=REPO, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [ln for ln in result.stderr.splitlines() if ln.startswith("fab-broker: error:")]


# ---- CLI and bad configuration

def test_check_config_prints_each_bad_key_path(tmp_path):
    cfg = tmp_path / "broker.yaml"
    cfg.write_text("listener: {port: 99999, hots: x}\nallow_anonymous: maybe\npassword_file: p\n")
    result = run_cli("--config", str(cfg), "--check-config")
    assert result.returncode == 2
    text = "\n".join(errors(result))
    for key in ("listener.port", "listener.hots", "allow_anonymous"):
        assert f"broker.yaml: {key}:" in text


def test_check_config_accepts_a_good_config_and_names_missing_files(embedded):
    b = embedded()
    ok = run_cli("--config", str(b.config_path), "--check-config")
    assert (ok.returncode, errors(ok)) == (0, [])
    b.acl_file.unlink()
    missing = run_cli("--config", str(b.config_path), "--check-config")
    assert missing.returncode == 2 and any("cannot read ACL file" in e for e in errors(missing))


@pytest.mark.parametrize("damage", ["missing-passwords", "malformed-passwords", "malformed-acl", "bad-tls"])
def test_bad_files_are_a_one_line_error(embedded, tmp_path, damage):
    b = embedded()
    if damage == "missing-passwords":
        b.password_file.unlink()
    elif damage == "malformed-passwords":
        b.password_file.write_text("cloud-without-hash\n")
    elif damage == "malformed-acl":
        b.acl_file.write_text("topic readwrite fab/#\nallow everything\n")
    else:
        (tmp_path / "cert.pem").write_text("not a certificate")
        cfg = yaml.safe_load(b.config_path.read_text())
        cfg["listener"]["tls"] = {"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "cert.pem")}
        b.config_path.write_text(yaml.safe_dump(cfg))
    result = run_cli("--config", str(b.config_path))
    assert result.returncode == 2
    assert len(errors(result)) == 1, result.stderr


def test_port_in_use_is_a_clear_error(embedded):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        b = embedded(listener={"port": taken.getsockname()[1]})
        result = run_cli("--config", str(b.config_path))
    assert result.returncode == 1
    assert [e for e in errors(result) if "cannot listen on 127.0.0.1:" in e and "in use" in e], result.stderr


def test_passwd_adds_and_updates_users(tmp_path):
    path = tmp_path / "passwd"
    assert run_cli("passwd", str(path), "cloud", stdin="first\n").returncode == 0
    assert run_cli("passwd", str(path), "s1/l1", "--password", "edge-pw").returncode == 0
    assert run_cli("passwd", str(path), "cloud", "--password", "second").returncode == 0
    users = read_password_file(path)
    assert sorted(users) == ["cloud", "s1/l1"]
    assert verify_password("second", users["cloud"]) and verify_password("edge-pw", users["s1/l1"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert run_cli("passwd", str(path), "bad:name", "--password", "x").returncode == 2


def test_sigterm_stops_cleanly(embedded):
    b = embedded().start()
    with connect(b, CLOUD):
        pass
    assert b.stop() == 0
    assert "Traceback" not in b.log_tail(200)


# ---- robustness

MALFORMED = {
    "garbage": b"\xff\xff\xff\xff\xff",
    "publish-before-connect": publish_packet("fab/v1/x", b"x"),
    "remaining-length-too-long": bytes([0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
    "connect-bad-protocol": packet(0x10, b"\x00\x04HTTP\x04\x02\x00\x3c\x00\x01x"),
    "connect-truncated": packet(0x10, b"\x00\x04MQTT\x04"),
    "connect-reserved-flag": packet(0x10, b"\x00\x04MQTT\x04\x03\x00\x3c\x00\x01x"),
}
AFTER_CONNECT = {
    "publish-qos3": bytes([0x36, 0x05, 0x00, 0x01, ord("a"), 0x00, 0x01]),
    "publish-wildcard-topic": publish_packet("fab/v1/#", b"x"),
    "publish-bad-utf8": packet(0x30, b"\x00\x02\xff\xfe" + b"x"),
    "publish-truncated": bytes([0x32, 0x03, 0x00, 0x09, ord("a")]),
    "subscribe-bad-flags": packet(0x80, b"\x00\x01\x00\x01a\x01"),
    "subscribe-bad-filter": packet(0x82, b"\x00\x01\x00\x03a#b\x01"),
    "subscribe-qos3": packet(0x82, b"\x00\x01\x00\x01a\x03"),
    "second-connect": connect_packet("again"),
    "reserved-type": bytes([0xF0, 0x00]),
}


def test_malformed_packets_close_only_their_connection(embedded):
    b = embedded().start()
    with connect(b, CLOUD) as watcher:
        assert watcher.subscribe(CMD, qos=1) == 1
        for name, data in MALFORMED.items():
            with RawClient(b.host, b.port) as r:
                r.send(data)
                assert r.closed_by_peer(3.0), name
        for name, data in AFTER_CONNECT.items():
            with RawClient(b.host, b.port) as r:
                assert r.connect(f"bad-{name}", username=CLOUD, password=b.users[CLOUD])[1] == 0
                r.send(data)
                assert r.closed_by_peer(3.0), name
        with connect(b, CLOUD) as cloud:
            cloud.publish(CMD, b"still here", qos=1)
        assert expect_message(watcher.messages).payload == b"still here"
    assert b.running
    assert "Traceback" not in b.log_tail(500)


def test_codec_rejects_malformed_input():
    assert packet_bounds(bytearray(b"\x30"), 0, 100) is None
    assert packet_bounds(bytearray(b"\x30\x05ab"), 0, 100) is None
    assert packet_bounds(bytearray(b"\x30\x02ab"), 0, 100) == (2, 4)
    with pytest.raises(ProtocolError):
        packet_bounds(bytearray(b"\x30\x80\x80\x80\x80\x01"), 0, 1 << 30)
    with pytest.raises(ProtocolError):
        packet_bounds(bytearray(b"\x30\xff\x7f"), 0, 1024)
    with pytest.raises(ProtocolError):
        decode_connect(b"\x00\x04MQTT\x04\x40\x00\x3c\x00\x01x\x00\x02pw")  # password without username


def test_session_takeover_closes_the_previous_connection(embedded):
    b = embedded().start()
    with RawClient(b.host, b.port) as first:
        assert first.connect("same-id", username=EDGE_L1, password=b.users[EDGE_L1])[1] == 0
        with RawClient(b.host, b.port) as second:
            assert second.connect("same-id", username=EDGE_L1, password=b.users[EDGE_L1])[1] == 0
            assert first.closed_by_peer(3.0)
            second.send(bytes([0xC0, 0x00]))
            assert second.read().type == 13


# ---- persistence beyond the shared tests

def _persistent_edge(b: BrokerProcess) -> RawClient:
    r = RawClient(b.host, b.port)
    assert r.connect("edge-l1", username=EDGE_L1, password=b.users[EDGE_L1], clean_session=False)[1] == 0
    return r


def test_unacknowledged_message_survives_restart_with_dup(embedded):
    b = embedded().start()
    with _persistent_edge(b) as r:
        assert r.subscribe([(CMD, 1)]) == [1]
        with connect(b, CLOUD) as cloud:
            cloud.publish(CMD, b"train", qos=1)
        first = r.read_type(PUBLISH)
        assert not first.dup
    b.restart()
    with _persistent_edge(b) as r:
        again = r.read_type(PUBLISH)
        topic, pid, payload = again.publish_fields()
        assert (topic, payload, again.qos, again.dup) == (CMD, b"train", 1, True)
        r.send(puback_packet(pid))


def test_retained_message_survives_a_crash(embedded):
    b = embedded().start()
    state = "fab/v1/s1/l1/edge/state"
    with connect(b, CLOUD) as cloud:
        cloud.publish(state, b"online", qos=1, retain=True)
    time.sleep(0.5)  # the writer commits within milliseconds
    b.kill()
    b.start()
    with connect(b, CLOUD) as cloud:
        cloud.subscribe(state)
        m = expect_message(cloud.messages)
        assert (m.payload, m.retain) == (b"online", True)


def test_corrupt_persistence_file_is_moved_aside(embedded):
    b = embedded()
    db = b.workdir / "state.db"
    db.write_bytes(b"this is not a SQLite database" * 100)
    b.start()
    with connect(b, CLOUD) as cloud:
        cloud.publish(CMD, b"works", qos=1)
    assert list(b.workdir.glob("state.db.corrupt-*")), "the damaged file must be kept for inspection"
    assert "unreadable" in b.log_tail(100)


def test_offline_queue_is_bounded(embedded):
    b = embedded(max_queued_messages=5).start()
    with connect(b, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        assert edge.subscribe(CMD, qos=1) == 1
        edge.disconnect()
    with connect(b, CLOUD) as cloud:
        for i in range(10):
            cloud.publish(CMD, f"m{i}", qos=1)
    with connect(b, EDGE_L1, client_id="edge-l1", clean_session=False) as edge:
        got = expect_messages(edge.messages, 5)
        expect_no_message(edge.messages, within=0.5)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(5)]


# ---- QoS 2, wills with retain, TLS

def test_qos2_end_to_end(embedded):
    b = embedded().start()
    with connect(b, EDGE_L1) as edge, connect(b, CLOUD) as cloud:
        assert edge.subscribe(CMD, qos=2) == 2
        for i in range(3):
            cloud.publish(CMD, f"q2-{i}", qos=2)
        got = expect_messages(edge.messages, 3)
        expect_no_message(edge.messages, within=0.5)
    assert [(m.payload, m.qos) for m in got] == [(f"q2-{i}".encode(), 2) for i in range(3)]


def test_will_with_retain_is_kept(embedded):
    b = embedded().start()
    state = "fab/v1/s1/l1/edge/state"
    with RawClient(b.host, b.port) as r:
        assert r.connect("edge-l1", username=EDGE_L1, password=b.users[EDGE_L1], keepalive=1,
                         will=(state, b"offline", 1, True))[1] == 0
        assert r.closed_by_peer(5.0)
    with connect(b, CLOUD) as cloud:
        cloud.subscribe(state)
        m = expect_message(cloud.messages)
        assert (m.payload, m.retain) == (b"offline", True)


def test_tls_listener(embedded, tmp_path):
    if not shutil.which("openssl"):
        pytest.fail("the openssl command is needed to make a test certificate (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    b = embedded(listener={"tls": {"certfile": str(cert), "keyfile": str(key)}}).start()
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    with socket.create_connection((b.host, b.port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(connect_packet("tls-client", username=CLOUD, password=b.users[CLOUD]))
        assert tls.recv(4) == b"\x20\x02\x00\x00"


# ---- reload and amqtt's plugin API

def test_sighup_reloads_the_password_file(embedded):
    b = embedded().start()
    assert run_cli("passwd", str(b.password_file), "cloud2", "--password", "new-pw").returncode == 0
    b.users["cloud2"] = "new-pw"
    with RawClient(b.host, b.port) as r:
        assert r.connect("before-reload", username="cloud2", password="new-pw")[1] == 5
    os.kill(b.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "reloaded" not in b.log_tail(5) and time.monotonic() < deadline:
        time.sleep(0.05)
    with RawClient(b.host, b.port) as r:
        assert r.connect("after-reload", username="cloud2", password="new-pw")[1] == 0


def test_amqtt_broker_context_uses_the_same_tables():
    async def scenario() -> Received:
        cfg = BrokerConfig(listener={"port": 0}, allow_anonymous=True, persistence_file=None)
        broker = FabBroker(cfg)
        await broker.start()
        ctx = broker.plugins_manager.context
        try:
            await ctx.retain_message("fab/v1/s1/l1/edge/state", b"retained", 1)
            await ctx.add_subscription("offline-1", "fab/v1/#", 1)
            await ctx.broadcast_message("fab/v1/s1/l1/edge/cmd", b"broadcast", 1)
            assert [m.payload for m in ctx.get_session("offline-1").queue] == [b"broadcast"]
            port = broker.bound_ports[0]

            def subscribe_retained() -> Received:
                with PahoClient("127.0.0.1", port, None, None) as c:
                    c.start()
                    c.subscribe("fab/v1/s1/+/edge/state")
                    return expect_message(c.messages)

            return await asyncio.get_running_loop().run_in_executor(None, subscribe_retained)
        finally:
            await broker.shutdown()

    m = asyncio.run(scenario())
    assert (m.topic, m.payload, m.retain) == ("fab/v1/s1/l1/edge/state", b"retained", True)
