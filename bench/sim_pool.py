"""Many simulated nodes on one thread, and the processes that hold them.

    pool = NodePool("127.0.0.1", 1883, plant_nodes(lines, passwords), Traffic())
    pool.connect_all(batch=50)          # batches wait for their CONNACKs and SUBACKs
    pool.start_traffic()                # detector status, training progress and metrics, on timers
    pool.run(lambda: time.monotonic() > end)
    pool.close(); pool.stats()

    fleet = SimFleet(broker, lines, Traffic(), procs=2, batch=50, max_s=300)   # child processes
    fleet.connected(120); fleet.go(tasks); ...; stats = fleet.stop(); fleet.close()

The pool drives each node's paho client with paho's external-loop API: its socket
callbacks (open, close, register and unregister for writing) keep one ``selectors``
selector up to date, ``loop_read``/``loop_write`` run on readiness and ``loop_misc``
once a second; a timer heap paces the traffic. Everything runs on the pool's thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import multiprocessing as mp
import random
import selectors
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from bench.sim_nodes import LinePlan, SimNode, Traffic, plant_nodes
from broker.harness import BrokerProcess

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Timer:
    due: float
    seq: int
    fn: Callable[[], float | None] = field(compare=False)  # returns the next due time, or None to stop


class NodePool:
    """Many SimNodes on one selector loop (this thread only), with a timer heap for their traffic."""

    def __init__(self, host: str, port: int, nodes: list[SimNode], traffic: Traffic | None = None) -> None:
        self.host, self.port, self.nodes, self.traffic = host, port, nodes, traffic or Traffic()
        self._sel = selectors.DefaultSelector()
        self._timers: list[_Timer] = []
        self._seq = itertools.count()
        self._controls: dict[int, Callable[[], None]] = {}
        self.connect_s: float | None = None
        for n in nodes:
            n.client.on_socket_open = self._sock_open
            n.client.on_socket_close = self._sock_close
            n.client.on_socket_register_write = lambda c, u, s: self._modify(s, c, selectors.EVENT_WRITE)
            n.client.on_socket_unregister_write = lambda c, u, s: self._modify(s, c, 0)

    # ---- selector plumbing

    def _sock_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._sel.register(sock, selectors.EVENT_READ, client)

    def _sock_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        try:
            self._sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _modify(self, sock: Any, client: mqtt.Client, write: int) -> None:
        try:
            self._sel.modify(sock, selectors.EVENT_READ | write, client)
        except (KeyError, ValueError):
            pass

    def add_control(self, fileobj: Any, on_ready: Callable[[], None]) -> None:
        """Watch another readable file (a pipe from the parent) in the same loop."""
        self._sel.register(fileobj, selectors.EVENT_READ, None)
        self._controls[fileobj.fileno()] = on_ready

    def schedule(self, due: float, fn: Callable[[], float | None]) -> None:
        heapq.heappush(self._timers, _Timer(due, next(self._seq), fn))

    def step(self, timeout: float = 0.05) -> None:
        now = time.monotonic()
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0].due - now))
        for key, mask in self._sel.select(timeout):
            client = key.data
            if client is None:
                self._controls[key.fd]()
                continue
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE:
                client.loop_write()
        now = time.monotonic()
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            nxt = timer.fn()
            if nxt is not None:
                self.schedule(nxt, timer.fn)

    def run(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Drive the loop until ``done()``; False when ``timeout`` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        while not done():
            if end is not None and time.monotonic() > end:
                return False
            self.step()
        return True

    # ---- lifecycle

    def connect_all(self, batch: int = 50, timeout: float = 60.0) -> int:
        """Connect in batches (each waits for its CONNACKs and SUBACKs); the number of nodes ready."""
        t0 = time.monotonic()
        end = t0 + timeout
        self.schedule(t0 + 1.0, self._misc)
        for i in range(0, len(self.nodes), batch):
            group = self.nodes[i:i + batch]
            for n in group:
                try:
                    n.client.connect(self.host, self.port, self.traffic.keepalive)
                except OSError as exc:
                    n.refused = True
                    log.error("%s could not connect: %s", n.username, exc)
            self.run(lambda g=group: all(n.ready or n.refused for n in g), max(0.0, end - time.monotonic()))
        self.connect_s = time.monotonic() - t0
        return sum(n.ready for n in self.nodes)

    def _misc(self) -> float:
        for n in self.nodes:
            n.client.loop_misc()
        return time.monotonic() + 1.0

    def start_traffic(self, tasks: dict[str, str] | None = None) -> None:
        """Detector status and training progress start now, at random phases; ``tasks``: line -> task id."""
        rng = random.Random(0)
        now = time.monotonic()
        for n in self.nodes:
            if n.role == "detector":
                self.schedule(now + rng.uniform(0, self.traffic.status_period), self._status_timer(n))
            elif (tasks or {}).get(n.ids["line"], n.task):
                n.task = (tasks or {}).get(n.ids["line"], n.task)
                self.schedule(now + rng.uniform(0, 1 / self.traffic.progress_hz), self._progress_timer(n))

    def _status_timer(self, n: SimNode) -> Callable[[], float | None]:
        count, period = itertools.count(1), self.traffic.status_period

        def tick() -> float | None:
            if not n.ready:
                return None
            n.publish_status(next(count), period)
            return time.monotonic() + period

        return tick

    def _progress_timer(self, n: SimNode) -> Callable[[], float | None]:
        count, hz = itertools.count(), self.traffic.progress_hz

        def tick() -> float | None:
            if not n.ready:
                return None
            n.publish_progress(next(count), self.traffic.batches, hz)
            return time.monotonic() + 1 / hz

        return tick

    def close(self, timeout: float = 10.0) -> None:
        """Stop traffic, publish each node's offline state (retained, QoS 1), disconnect, close sockets."""
        self._timers.clear()
        infos = [n.publish("offline", n.state_topic, n._state(False, "shutdown"), 1, True)
                 for n in self.nodes if n.ready]
        infos = [i for i in infos if i.rc == mqtt.MQTT_ERR_SUCCESS]
        self.run(lambda: all(i.is_published() for i in infos), timeout)
        for n in self.nodes:
            n.ready = False   # a disconnect from here on is ours
            n.client.disconnect()
        self.run(lambda: not any(n.client.want_write() for n in self.nodes if n.client.socket()), 2.0)
        for n in self.nodes:
            n.client._reset_sockets()   # closes the socket (unregistering it) and any socket pair
        self._sel.close()

    def stats(self) -> dict[str, Any]:
        """Sums over the nodes: sent and received by kind, command latencies, connection counts."""
        sent: Counter[str] = Counter()
        received: Counter[str] = Counter()
        latencies: list[tuple[float, float]] = []   # (sent at, latency) of each command
        for n in self.nodes:
            sent.update({f"{n.role}.{k}": v for k, v in n.sent.items()})
            received.update({f"{n.role}.{k}": v for k, v in n.received.items()})
            latencies += zip(n.sent_ts, n.latencies, strict=True)
        return {"nodes": len(self.nodes), "connected": sum(n.was_ready for n in self.nodes),
                "refused": sum(n.refused for n in self.nodes), "disconnects": sum(n.disconnects for n in self.nodes),
                "connect_s": self.connect_s, "sent": dict(sent), "received": dict(received),
                "latencies": latencies}


def sim_process(conn: Any, host: str, port: int, lines: list[LinePlan], passwords: dict[str, str],
                traffic: Traffic, batch: int, max_s: float) -> None:
    """Child process: connect the nodes, start traffic on "go", close and report on "stop" (or after max_s)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pool = NodePool(host, port, plant_nodes(lines, passwords), traffic)
    state: dict[str, Any] = {"go": False, "tasks": None, "stop": False}

    def on_control() -> None:
        try:
            cmd, arg = conn.recv()
        except EOFError:
            cmd, arg = "stop", None
        if cmd == "go":
            state.update(go=True, tasks=arg)
        else:
            state["stop"] = True

    pool.add_control(conn, on_control)
    ready = pool.connect_all(batch)
    conn.send(("connected", (ready, len(pool.nodes), pool.connect_s)))
    pool.run(lambda: state["go"] or state["stop"], max_s)
    if not state["stop"]:
        pool.start_traffic(state["tasks"])
        pool.run(lambda: state["stop"], max_s)
    pool.close()
    conn.send(("stats", pool.stats()))
    conn.close()


class SimFleet:
    """The plant's nodes split over ``procs`` child processes."""

    def __init__(self, broker: BrokerProcess, lines: list[LinePlan], traffic: Traffic, *, procs: int = 2,
                 batch: int = 50, max_s: float = 600.0) -> None:
        """``max_s``: a child stops by itself this long after connecting and again after "go"."""
        ctx = mp.get_context("spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        n = max(1, min(procs, len(lines)))
        for i in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=sim_process, daemon=True, name=f"sim-{i}",
                            args=(child, broker.host, broker.port, lines[i::n], broker.users, traffic, batch,
                                  max_s))
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def _recv(self, what: str, timeout: float) -> list[Any]:
        end, out = time.monotonic() + timeout, []
        for conn, p in zip(self.pipes, self.procs, strict=True):
            if not conn.poll(max(0.0, end - time.monotonic())):
                raise RuntimeError(f"{p.name}: no {what} within {timeout:.0f} s")
            try:
                kind, value = conn.recv()
            except EOFError:
                raise RuntimeError(f"{p.name} exited (code {p.exitcode}) before its {what}") from None
            if kind != what:
                raise RuntimeError(f"{p.name}: expected {what}, got {kind}")
            out.append(value)
        return out

    def connected(self, timeout: float) -> tuple[int, int, float]:
        got = self._recv("connected", timeout)
        return sum(g[0] for g in got), sum(g[1] for g in got), max(g[2] or 0.0 for g in got)

    def go(self, tasks: dict[str, str] | None) -> None:
        for conn in self.pipes:
            conn.send(("go", tasks))

    def stop(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        for conn in self.pipes:
            conn.send(("stop", None))
        return self._recv("stats", timeout)

    def close(self) -> None:
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self.pipes:
            conn.close()
