"""One load run of the scale bench against a started broker: simulated plant, cloud side, measurements.

    raw = measure(broker, Plan(lines=50, detectors=8), workdir, cloud=True)

Simulated nodes live in ``plan.procs`` worker processes (bench.sim_nodes, hundreds of
paho clients per thread); the cloud monitor (commands, counting) and the optional
cloud app (listener + web) run beside them. The measured window starts once every
node is connected, the cloud has every birth and commands round-trip fast again
after the traffic started; CPU and memory come from /proc/<pid>/stat over it.
"""

from __future__ import annotations

import logging
import os
import random
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.sim_cloud import CloudApp, CloudMonitor
from bench.sim_nodes import LinePlan, Traffic
from bench.sim_pool import SimFleet
from broker.harness import BrokerProcess
from fabbus.acl import username_for

log = logging.getLogger(__name__)

CLOUD_USER = "cloud"
_TICK, _PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Plan:
    lines: int = 50
    detectors: int = 8
    training: int = 10            # edges publishing progress and metrics
    duration: float = 60.0        # measured window (s)
    warmup: float = 3.0           # at least this (and a status period) after traffic starts, before measuring
    traffic: Traffic = field(default_factory=Traffic)
    command_rate: float = 5.0     # commands per second, to random lines
    api_rate: float = 2.0         # dashboard API requests per second (fleet and tasks in turn)
    procs: int = 2                # processes holding the simulated nodes
    batch: int = 50               # nodes connecting at once
    site: str = "plant"

    def line_plans(self, tasks: dict[str, str] | None = None) -> list[LinePlan]:
        dets = tuple(f"det{d}" for d in range(1, self.detectors + 1))
        names = [f"line{i:02d}" for i in range(1, self.lines + 1)]
        return [LinePlan(self.site, n, dets, (tasks or {}).get(n, f"sim-{n}" if i < self.training else None))
                for i, n in enumerate(names)]


def users_for(plan: Plan, passwords: Callable[[], str]) -> dict[str, str]:
    """The broker users of a plan: the cloud user and every node (username = its scope)."""
    users = {CLOUD_USER: passwords()}
    for lp in plan.line_plans():
        users[username_for("edge", site=lp.site, line=lp.line)] = passwords()
        for det in lp.detectors:
            users[username_for("detector", site=lp.site, line=lp.line, det=det)] = passwords()
    return users


def proc_sample(pid: int) -> tuple[float, int] | None:
    """(CPU seconds, RSS bytes) of a process from /proc, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK, int(fields[21]) * _PAGE   # utime+stime, rss


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]



def _paced(rate: float, stop: threading.Event, fn: Callable[[], None]) -> threading.Thread:
    def loop() -> None:
        t0, n = time.monotonic(), 0
        while not stop.is_set():
            delay = t0 + n / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            try:
                fn()
            except Exception:  # boundary: one failed call is logged and never ends the run
                log.exception("paced call failed")
            n += 1
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


class ApiProbe:
    """GET /api/v1/fleet and /api/v1/tasks in turn; latencies, errors and the dashboard's status age."""

    def __init__(self, app: CloudApp) -> None:
        self.app = app
        self.lat: dict[str, list[float]] = {"fleet": [], "tasks": []}
        self.ages: list[float] = []
        self.errors: list[str] = []
        self._turn = 0

    def once(self, which: str | None = None) -> None:
        which = which or ("fleet", "tasks")[self._turn % 2]
        self._turn += 1
        try:
            seconds, data = self.app.get(f"/api/v1/{which}")
        except (OSError, RuntimeError, ValueError) as exc:
            self.errors.append(f"{which}: {exc}")
            return
        self.lat[which].append(seconds)
        if which == "fleet":
            now = time.time()
            self.ages += [now - d["status"]["ts"] for site in data["sites"] for ln in site["lines"]
                          for d in ln["detectors"] if d.get("status")]


def measure(broker: BrokerProcess, plan: Plan, workdir: Path, *, cloud: bool = False) -> dict[str, Any]:
    """Run the plant against ``broker`` (started, with users_for(plan)); the raw measurements.

    With ``cloud`` the cloud app runs too; if it cannot start, ``raw["cloud_error"]`` says why
    and the run goes on without it.
    """
    raw: dict[str, Any] = {}
    with ExitStack() as stack:
        app = probe = tasks = None
        if cloud:
            try:
                app = CloudApp(workdir / "cloud", broker, plan.line_plans(), CLOUD_USER)
                stack.callback(app.stop)
                app.start()
                tasks = app.create_tasks(plan.line_plans()[:plan.training])
            except Exception as exc:  # boundary: the bench goes on without the cloud app and says why
                log.error("cloud app failed: %s", exc)
                raw["cloud_error"], app = f"{type(exc).__name__}: {exc}", None
        if app is not None:
            probe = ApiProbe(app)
            for _ in range(10):
                probe.once("fleet")
                probe.once("tasks")
            raw["api_idle"] = {k: list(v) for k, v in probe.lat.items()}
            probe.lat = {"fleet": [], "tasks": []}
        monitor = CloudMonitor(broker.host, broker.port, CLOUD_USER, broker.users[CLOUD_USER]).start()
        stack.callback(monitor.close)
        fleet = SimFleet(broker, plan.line_plans(tasks), plan.traffic, procs=plan.procs, batch=plan.batch,
                         max_s=plan.warmup + plan.duration + 120)
        stack.callback(fleet.close)
        raw.update(_load(broker, plan, fleet, monitor, app, probe, tasks))
    return raw


def _load(broker: BrokerProcess, plan: Plan, fleet: SimFleet, monitor: CloudMonitor, app: CloudApp | None,
          probe: ApiProbe | None, tasks: dict[str, str] | None) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    assert broker.pid is not None
    watched = {"broker": broker.pid, **{f"sim{i}": p.pid for i, p in enumerate(fleet.procs)},
               **(app.pids if app else {})}
    raw["ready"], raw["nodes"], raw["connect_s"] = fleet.connected(120.0)
    raw["births_s"] = _births(monitor, raw["ready"], 120.0)
    fleet.go(tasks)
    raw["settle_s"] = _settle(monitor, plan, 120.0)
    raw["window_t0"] = time.time()
    cpu0 = {k: proc_sample(pid) for k, pid in watched.items()}
    t0, (n0, _) = time.monotonic(), monitor.snapshot()
    stop = threading.Event()
    rng = random.Random(1)
    lines = plan.line_plans()
    threads = [_paced(plan.command_rate, stop, lambda: monitor.command(plan.site, rng.choice(lines).line))]
    if probe is not None:
        threads.append(_paced(plan.api_rate, stop, probe.once))
    rss_peak = 0
    while time.monotonic() - t0 < plan.duration:
        s = proc_sample(broker.pid)
        rss_peak = max(rss_peak, s[1] if s else 0)
        time.sleep(min(0.5, max(0.0, plan.duration - (time.monotonic() - t0))))
    stop.set()
    for t in threads:
        t.join(35)
    cpu1 = {k: proc_sample(pid) for k, pid in watched.items()}
    window, (n1, _) = time.monotonic() - t0, monitor.snapshot()
    raw["cpu_pct"] = {k: 100 * (cpu1[k][0] - cpu0[k][0]) / window for k in watched if cpu0[k] and cpu1[k]}
    raw["broker_rss"] = (cpu1["broker"] or (0, 0))[1]
    raw["broker_rss_peak"] = max(rss_peak, raw["broker_rss"])
    raw["cloud_rate"] = (n1 - n0) / window
    if app is not None and probe is not None:
        raw["api"], raw["ages"], raw["api_errors"] = probe.lat, probe.ages, probe.errors
        mine = set((tasks or {}).values())
        try:
            _, listed = app.get("/api/v1/tasks?kind=train")
            raw["tasks_running"] = sum(1 for t in listed["tasks"] if t["id"] in mine and t["state"] == "IN_PROGRESS")
        except (OSError, RuntimeError, ValueError) as exc:
            probe.errors.append(f"tasks: {exc}")
            raw["tasks_running"] = "?"
        raw["tasks_total"] = len(mine)
    stats = fleet.stop()
    raw.update(_deliveries(stats, monitor, raw["window_t0"]))
    return raw


def _settle(monitor: CloudMonitor, plan: Plan, timeout: float, fast: float = 0.25) -> float | None:
    """Seconds after traffic started until the broker keeps up: every detector has reported once
    (``warmup`` >= a status period) and two command round trips in a row took under ``fast`` s.
    A broker pays for each new topic's first publish (the embedded one matches it against every
    wildcard subscription), so a plant's first reports can queue up."""
    t0 = time.monotonic()
    time.sleep(max(plan.warmup, plan.traffic.status_period + 1.0))
    good, lines, rng = 0, plan.line_plans(), random.Random(2)
    while good < 2:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            log.warning("commands still slower than %.2f s %.0f s after the traffic started", fast, timeout)
            return None
        rtt = monitor.probe(plan.site, rng.choice(lines).line, left)
        good = good + 1 if rtt is not None and rtt < fast else 0
        time.sleep(0.1)
    return time.monotonic() - t0


def _births(monitor: CloudMonitor, births: int, timeout: float) -> float | None:
    """Seconds after the last CONNACK until the cloud has every birth: the broker caught up."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        counts = monitor.snapshot()[1]
        if counts.get("edge_state", 0) + counts.get("detector_state", 0) >= births:
            return time.monotonic() - t0
        time.sleep(0.05)
    log.warning("the cloud did not get every birth within %.0f s", timeout)
    return None


QOS1_TO_CLOUD = {"edge_state": ("edge.birth", "edge.offline"), "detector_state": ("detector.birth", "detector.offline"),
                 "task_metrics": ("edge.metrics",), "task_status": ("edge.ack",)}
QOS0_TO_CLOUD = {"detector_status": ("detector.status",), "task_progress": ("edge.progress",)}


def _deliveries(stats: list[dict[str, Any]], monitor: CloudMonitor, window_t0: float | None,
                timeout: float = 15.0) -> dict[str, Any]:
    """Sent by the nodes vs received by the cloud monitor, after waiting for the QoS 1 stragglers."""
    sent: dict[str, int] = {}
    recv: dict[str, int] = {}
    for s in stats:
        for k, v in s["sent"].items():
            sent[k] = sent.get(k, 0) + v
        for k, v in s["received"].items():
            recv[k] = recv.get(k, 0) + v
    expected = {name: sum(sent.get(k, 0) for k in keys) for name, keys in QOS1_TO_CLOUD.items()}
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(monitor.snapshot()[1].get(n, 0) < v for n, v in expected.items()):
        time.sleep(0.1)
    counts = monitor.snapshot()[1]
    timed = sorted(x for s in stats for x in s["latencies"])
    latencies = [lat for _, lat in timed]
    since = window_t0 or 0.0
    return {
        "sent": sent, "edge_received": recv, "cloud_received": counts,
        "qos1_sent": sum(expected.values()) + monitor.commands_sent,
        "qos1_received": sum(min(counts.get(n, 0), v) for n, v in expected.items()) + len(latencies),
        "qos0": {name: (sum(sent.get(k, 0) for k in keys), counts.get(name, 0))
                 for name, keys in QOS0_TO_CLOUD.items()},
        "fanout": (sent.get("detector.status", 0), recv.get("edge.detector_status", 0)),
        "cmd_latency": [lat for ts, lat in timed if ts >= since], "cmd_timed": timed, "rtt": monitor.rtts(since),
        "commands_sent": monitor.commands_sent, "commands_received": len(latencies),
        "connected": sum(s["connected"] for s in stats), "refused": sum(s["refused"] for s in stats),
        "disconnects": sum(s["disconnects"] for s in stats),
        "duplicates": counts.get("duplicate", 0) + recv.get("edge.duplicate", 0),
        "qos1_lost": {name: n for name, n in [*((k, v - counts.get(k, 0)) for k, v in expected.items()),
                                              ("edge_command", monitor.commands_sent - len(latencies))] if n > 0},
    }


def quick(plan: Plan) -> Plan:
    """A small plan for a smoke run."""
    return replace(plan, lines=5, detectors=2, training=2, duration=8.0, warmup=1.0, procs=1, batch=20)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None
