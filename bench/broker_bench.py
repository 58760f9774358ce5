"""Embedded broker vs Mosquitto, side by side in one run with the same paho clients.

    python -m bench.broker_bench [--qos0 20000] [--qos1 5000] [--latency 1000] [--clients 200]

Measures QoS 0 and QoS 1 throughput (1 publisher, 1 subscriber, 100-byte payloads),
publish-to-receive latency p50/p99 (paced publishing, send time in the payload)
and the time for N clients to connect at once, then prints a table with the
embedded/Mosquitto ratio. The subscriber runs in its own process so that the
publisher and subscriber do not share one interpreter lock. Both brokers run on
free ports of 127.0.0.1 with the project's password and ACL files; every phase is
bounded in time.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import secrets
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from broker.harness import KINDS, BrokerError, BrokerProcess
from fabbus.topics import contract

log = logging.getLogger(__name__)

USER = "cloud"
PAYLOAD_BYTES = 100
Result = tuple[float, str]  # value, note (empty when the phase completed)


def _client(host: str, port: int, password: str, client_id: str) -> tuple[mqtt.Client, threading.Event, list[str]]:
    """An unstarted paho client (TCP_NODELAY, as production clients should set) and its CONNACK event."""
    connected, failed = threading.Event(), []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311)
    c.username_pw_set(USER, password)
    c.max_queued_messages_set(0)

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            failed.append(str(reason_code))
        connected.set()

    c.on_connect = on_connect
    c.on_socket_open = lambda client, userdata, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c, connected, failed


def _start(c: mqtt.Client, connected: threading.Event, failed: list[str], host: str, port: int) -> None:
    c.connect_async(host, port, keepalive=60)
    c.loop_start()
    if not connected.wait(10) or failed:
        c.loop_stop()
        raise RuntimeError(f"bench client not connected: {failed or 'timeout'}")


def _subscriber(host: str, port: int, password: str, topic: str, qos: int, n: int, timeout: float,
                count, conn) -> None:  # noqa: ANN001 (multiprocessing objects)
    """Child process: subscribe, count messages into ``count``, send (last receive time, latencies)."""
    c, connected, failed = _client(host, port, password, f"bench-sub-{qos}-{n}")
    done, subscribed = threading.Event(), threading.Event()
    latencies: list[float] = []
    state = {"last": 0.0, "n": 0}

    def on_message(client, userdata, msg) -> None:  # noqa: ANN001
        now = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        latencies.append(now - struct.unpack_from("!d", msg.payload)[0])
        state["n"] += 1
        state["last"] = now
        count.value = state["n"]
        if state["n"] >= n:
            done.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: subscribed.set()
    _start(c, connected, failed, host, port)
    try:
        c.subscribe(topic, qos)
        subscribed.wait(10)
        conn.send("ready")
        done.wait(timeout)
    finally:
        c.disconnect()
        c.loop_stop()
    conn.send((state["last"], latencies))


def _run_pair(b: BrokerProcess, qos: int, n: int, timeout: float, *, window: int | None,
              rate: float | None) -> tuple[float, float, list[float]]:
    """Publish ``n`` messages to a subscriber process; (first publish time, last receive time, latencies).

    ``window`` bounds messages between publisher and subscriber (sustained throughput; Mosquitto
    drops beyond its 1000-message queue); ``rate`` paces the publisher instead (latency).
    """
    topic = contract().topic("task_metrics" if qos else "task_progress").format(site="bench", line="l1", task="t1")
    ctx = mp.get_context("spawn")
    count = ctx.Value("q", 0, lock=False)
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_subscriber, daemon=True,
                       args=(b.host, b.port, b.users[USER], topic, qos, n, timeout, count, child))
    proc.start()
    pub, connected, failed = _client(b.host, b.port, b.users[USER], f"bench-pub-{qos}-{n}")
    try:
        if not parent.poll(30) or parent.recv() != "ready":
            raise RuntimeError("subscriber process not ready")
        _start(pub, connected, failed, b.host, b.port)
        pad = b"x" * (PAYLOAD_BYTES - 8)
        t0 = time.perf_counter()
        deadline = t0 + timeout
        sent = 0
        while sent < n and time.perf_counter() < deadline:
            if rate is not None:
                delay = t0 + sent / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            elif window is not None and sent - count.value >= window:
                time.sleep(0.0002)
                continue
            pub.publish(topic, struct.pack("!d", time.perf_counter()) + pad, qos)
            sent += 1
        if not parent.poll(max(1.0, deadline - time.perf_counter() + 5)):
            raise RuntimeError("subscriber process sent no result")
        last, latencies = parent.recv()
    finally:
        pub.disconnect()
        pub.loop_stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        parent.close()
        child.close()
    return t0, last, latencies


def throughput(b: BrokerProcess, qos: int, n: int, timeout: float) -> Result:
    """Messages/s from the first publish to the last message received."""
    t0, last, lat = _run_pair(b, qos, n, timeout, window=500, rate=None)
    if not lat:
        return 0.0, f"0/{n} received"
    return len(lat) / max(last - t0, 1e-9), "" if len(lat) >= n else f"{len(lat)}/{n} received in {timeout:.0f} s"


def latency(b: BrokerProcess, qos: int, n: int, rate: float, timeout: float) -> tuple[Result, Result]:
    """p50 and p99 publish-to-receive latency (ms) at a paced ``rate`` msg/s."""
    _, _, lat = _run_pair(b, qos, n, timeout, window=None, rate=rate)
    if not lat:
        return (0.0, f"0/{n} received"), (0.0, f"0/{n} received")
    s = sorted(lat)
    note = "" if len(s) >= n else f"{len(s)}/{n} received"
    return (s[len(s) // 2] * 1000, note), (s[min(len(s) - 1, int(len(s) * 0.99))] * 1000, note)


def connect_storm(b: BrokerProcess, n: int, timeout: float) -> Result:
    """Seconds until ``n`` clients started at once all have their CONNACK."""
    clients = [_client(b.host, b.port, b.users[USER], f"bench-conn-{i}") for i in range(n)]
    t0 = time.perf_counter()
    try:
        for c, _, _ in clients:
            c.connect_async(b.host, b.port, keepalive=60)
            c.loop_start()
        for _, connected, _ in clients:
            connected.wait(max(0.0, t0 + timeout - time.perf_counter()))
        elapsed = time.perf_counter() - t0
    finally:
        for c, _, _ in clients:
            c.disconnect()
            c.loop_stop()
    ok = sum(1 for _, connected, failed in clients if connected.is_set() and not failed)
    return elapsed, "" if ok == n else f"{ok}/{n} connected"


def run_all(b: BrokerProcess, args: argparse.Namespace) -> dict[str, Result]:
    out: dict[str, Result] = {}
    log.info("%s: throughput", b.kind)
    out["QoS0 throughput (msg/s)"] = throughput(b, 0, args.qos0, args.timeout)
    out["QoS1 throughput (msg/s)"] = throughput(b, 1, args.qos1, args.timeout)
    for qos in (0, 1):
        log.info("%s: QoS %d latency", b.kind, qos)
        out[f"QoS{qos} latency p50 (ms)"], out[f"QoS{qos} latency p99 (ms)"] = latency(
            b, qos, args.latency, args.rate, args.timeout)
    log.info("%s: %d clients connecting", b.kind, args.clients)
    out[f"{args.clients} clients connect (s)"] = connect_storm(b, args.clients, args.timeout)
    return out


def table(results: dict[str, dict[str, Result] | str]) -> str:
    metrics = next((list(r) for r in results.values() if isinstance(r, dict)), [])
    lines = [f"{'metric':28} {'embedded':>12} {'mosquitto':>12} {'ratio':>8}", "-" * 63]
    notes = []
    for m in metrics:
        vals = {}
        for kind in KINDS:
            r = results.get(kind)
            if isinstance(r, dict):
                vals[kind] = r[m][0]
                if r[m][1]:
                    notes.append(f"{kind} {m}: {r[m][1]}")
        cells = [f"{vals[k]:12.2f}" if k in vals else f"{'n/a':>12}" for k in KINDS]
        ratio = (f"{vals['embedded'] / vals['mosquitto']:8.2f}"
                 if len(vals) == 2 and vals["mosquitto"] else f"{'n/a':>8}")
        lines.append(f"{m:28} {cells[0]} {cells[1]} {ratio}")
    lines.append("ratio = embedded / mosquitto (throughput: higher is better; latency and connect: lower is better)")
    notes += [f"{kind}: {r}" for kind, r in results.items() if isinstance(r, str)]
    return "\n".join(lines + [f"note: {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.broker_bench", description=__doc__.splitlines()[0])
    p.add_argument("--qos0", type=int, default=20_000, help="messages for QoS 0 throughput")
    p.add_argument("--qos1", type=int, default=5_000, help="messages for QoS 1 throughput")
    p.add_argument("--latency", type=int, default=1_000, help="messages per latency run")
    p.add_argument("--rate", type=float, default=1_000.0, help="paced publish rate for latency (msg/s)")
    p.add_argument("--clients", type=int, default=200, help="clients connecting at once")
    p.add_argument("--timeout", type=float, default=60.0, help="bound on each phase (s)")
    p.add_argument("--kinds", default=",".join(KINDS), help="brokers to run, comma separated")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kinds = [k for k in args.kinds.split(",") if k]
    users = {USER: secrets.token_urlsafe(16)}
    results: dict[str, dict[str, Result] | str] = {}
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as tmp:
        brokers = {k: BrokerProcess(k, Path(tmp) / k, users, [USER]) for k in kinds}
        try:
            for kind, b in brokers.items():
                try:
                    b.start()
                    results[kind] = run_all(b, args)
                except (BrokerError, RuntimeError) as exc:
                    results[kind] = f"failed: {exc}"
                    log.error("%s broker: %s", kind, exc)
                if b.running is False and isinstance(results.get(kind), dict):
                    results[kind] = f"broker exited during the run:\n{b.log_tail(10)}"
                b.stop()
        finally:
            for b in brokers.values():
                b.stop()
    print(table(results))
    return 0 if all(isinstance(r, dict) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
