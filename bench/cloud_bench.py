"""Cloud latencies end to end on the real parts: API request to the edge, edge progress to the browser.

    python -m bench.cloud_bench [-n 50] [-m 100] [--broker embedded|mosquitto] [--in-process]

The cloud runs as deployed (bench.cloud_live.CloudStack): ``python -m cloud_app listener``,
``worker`` and ``serve`` as processes on one config (SQLite database, SqliteHuey queue, the
shipped config/cloud.yaml otherwise), on a broker of 127.0.0.1; ``--in-process`` runs them
as threads of this process instead. A simulated edge (a real fabbus BusClient, role edge,
line s1/l1) acknowledges every command with ACCEPTED.

- command: ``n`` paced POST /api/v1/tasks/train with an API token; latency from just before
  the request is sent to the edge's handler receiving the task's edge_command (web commit,
  huey enqueue, a worker picking it up, the QoS 1 publish, the broker). The queue's idle
  workers poll SQLite at most every 1 s (huey ``max_delay``, as ``cloud_app worker`` runs it),
  which dominates this figure. The POST's own response time is reported beside it.
- progress: an event-stream client (http.client, as a browser's EventSource) on
  GET /api/v1/tasks/<id>/events of an accepted task while the edge publishes ``m`` paced
  TrainingProgress messages, batch i published at a recorded time; latency from that publish
  to the stream frame carrying batch i (broker, listener's transaction, the stream's database
  poll every ``web.event_poll_s``, which bounds this figure and is printed beside it).

Both ends of each latency are in this process: ``time.perf_counter`` on one clock. Every
phase is bounded by ``--timeout``; everything stops by itself and the table is printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cloud_live import CLOUD_USER, CloudStack, SimEdge, bench_users
from broker.harness import KINDS, BrokerError, BrokerProcess

log = logging.getLogger(__name__)

COMMAND = "API request -> edge command"
RESPONSE = "POST /tasks/train response"
PROGRESS = "edge progress -> event stream"


@dataclass
class Metric:
    name: str
    wanted: int
    samples: list[float] = field(default_factory=list)   # seconds

    def percentile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank, as bench.broker_bench) in ms; None without samples."""
        if not self.samples:
            return None
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(len(s) * q))] * 1000.0

    @property
    def complete(self) -> bool:
        return len(self.samples) >= self.wanted


def command_latency(cloud: CloudStack, edge: SimEdge, n: int, interval: float, timeout: float,
                    notes: list[str]) -> tuple[Metric, Metric]:
    """``n`` training requests, one every ``interval`` s; request sent -> edge received, and POST response."""
    cmd, resp = Metric(COMMAND, n), Metric(RESPONSE, n)
    sent: dict[str, float] = {}
    t0 = time.perf_counter()
    deadline = t0 + timeout
    body = cloud.train_body()
    failures = 0
    for i in range(n):
        delay = t0 + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if time.perf_counter() > deadline:
            notes.append(f"command: {i}/{n} requests sent within {timeout:.0f} s")
            break
        start = time.perf_counter()
        status, task = cloud.request("POST", "/api/v1/tasks/train", body)
        resp.samples.append(time.perf_counter() - start)
        if status != 201:
            failures += 1
            log.error("POST /api/v1/tasks/train: HTTP %s: %s", status, task)
            continue
        sent[task["id"]] = start
    for task_id, start in sent.items():
        got = edge.wait_command(task_id, max(0.0, deadline - time.perf_counter()))
        if got is not None:
            cmd.samples.append(got - start)
    if failures:
        notes.append(f"command: {failures} requests failed (see the log)")
    if len(cmd.samples) < len(sent):
        notes.append(f"command: {len(sent) - len(cmd.samples)} commands not received within {timeout:.0f} s")
    return cmd, resp


def _accepted_task(cloud: CloudStack, edge: SimEdge, timeout: float) -> str:
    """A new training task whose edge has acknowledged it (the cloud recorded ACCEPTED)."""
    status, task = cloud.request("POST", "/api/v1/tasks/train", cloud.train_body())
    if status != 201:
        raise RuntimeError(f"POST /api/v1/tasks/train: HTTP {status}: {task}")
    end = time.monotonic() + timeout
    if edge.wait_command(task["id"], timeout) is None:
        raise RuntimeError(f"the edge got no command for task {task['id']} within {timeout:.0f} s")
    while True:
        status, detail = cloud.request("GET", f"/api/v1/tasks/{task['id']}")
        if status == 200 and detail["state"] == "ACCEPTED":
            return str(task["id"])
        if time.monotonic() > end:
            raise RuntimeError(f"task {task['id']} not ACCEPTED within {timeout:.0f} s (HTTP {status}: {detail})")
        time.sleep(0.05)


def progress_latency(cloud: CloudStack, edge: SimEdge, m: int, rate: float, timeout: float,
                     notes: list[str]) -> Metric:
    """``m`` progress messages at ``rate``/s while a client reads the task's event stream; publish -> frame."""
    metric = Metric(PROGRESS, m)
    task = _accepted_task(cloud, edge, timeout)
    published: dict[int, float] = {}
    arrived: dict[int, float] = {}
    cond = threading.Condition()
    opened, ended = threading.Event(), threading.Event()
    errors: list[str] = []
    keepalive = float(cloud.config.web.options.get("keepalive_s", 15.0))

    def read() -> None:
        try:
            with cloud.stream(f"/api/v1/tasks/{task}/events", timeout=keepalive + timeout) as frames:
                for received, event, data in frames:
                    if event == "task":
                        opened.set()
                    elif event == "progress" and isinstance(data, dict):
                        with cond:
                            arrived.setdefault(int(data["batch"]), received)
                            cond.notify_all()
                    elif event == "end":
                        return
        except Exception as exc:   # a thread's boundary: reported by the main thread
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            ended.set()
            opened.set()
            with cond:
                cond.notify_all()

    reader = threading.Thread(target=read, name="bench-sse", daemon=True)
    reader.start()
    try:
        if not opened.wait(timeout) or errors:
            raise RuntimeError(f"event stream of {task} not open: {errors or 'timeout'}")
        t0 = time.perf_counter()
        deadline = t0 + timeout
        for i in range(m):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if time.perf_counter() > deadline:
                notes.append(f"progress: {i}/{m} published within {timeout:.0f} s")
                break
            published[i] = edge.progress(task, i, m)
        with cond:
            cond.wait_for(lambda: len(arrived) >= len(published) or ended.is_set(),
                          max(0.0, deadline - time.perf_counter()))
    finally:
        edge.status(task, "SUCCEEDED").wait(5)   # the stream sends "end" and closes
        reader.join(keepalive + 10)
    if errors:
        notes.append(f"progress: event stream failed: {errors[0]}")
    with cond:
        metric.samples = [arrived[i] - published[i] for i in sorted(published) if i in arrived]
    if len(metric.samples) < len(published):
        notes.append(f"progress: {len(published) - len(metric.samples)} of {len(published)} progress messages "
                     "never reached the stream (QoS 0)")
    return metric


def table(metrics: list[Metric], notes: list[str]) -> str:
    lines = [f"{'metric':34} {'p50 ms':>10} {'p99 ms':>10} {'n':>6}", "-" * 63]
    for mt in metrics:
        p50, p99 = mt.percentile(0.5), mt.percentile(0.99)
        cells = [f"{v:10.1f}" if v is not None else f"{'n/a':>10}" for v in (p50, p99)]
        lines.append(f"{mt.name:34} {cells[0]} {cells[1]} {len(mt.samples):>6}")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def run(args: argparse.Namespace, tmp: Path, metrics: list[Metric], notes: list[str]) -> None:
    """Both phases on a fresh broker and cloud in ``tmp``; their figures are appended to ``metrics``."""
    broker = BrokerProcess(args.broker, tmp / "broker", bench_users(), [CLOUD_USER])
    try:
        broker.start()
        with CloudStack(tmp / "cloud", broker, in_process=args.in_process, event_poll_s=args.event_poll) as cloud, \
                SimEdge(broker) as edge:
            cfg = cloud.config
            notes.append(f"{args.broker} broker; cloud {'threads in this process' if args.in_process else 'processes'}"
                         f" (listener, worker x{cfg.huey.workers}, web); SQLite database and SqliteHuey queue")
            cloud.wait_edge_online(args.timeout)
            for _ in range(args.warmup):   # the worker is up, connections and caches warm
                warm, _ = command_latency(cloud, edge, 1, 0.0, args.timeout, [])
                if not warm.complete:
                    raise RuntimeError(f"warm-up command not received: {cloud.log_tail('worker')}")
            log.info("command latency: %d requests", args.n)
            metrics.extend(command_latency(cloud, edge, args.n, args.interval, args.timeout, notes))
            notes.append(f"command: one request every {args.interval * 1000:.0f} ms; idle huey workers poll the "
                         f"queue every 0.1 s backing off to 1.0 s; dispatch ack poll {cfg.dispatch.poll_interval_s} s;"
                         f" {edge.repeats} commands received again")
            log.info("progress latency: %d messages", args.m)
            metrics.append(progress_latency(cloud, edge, args.m, args.rate, args.timeout, notes))
            notes.append(f"progress: {args.rate:g} msg/s (QoS 0); the event stream polls the database every "
                         f"{cfg.web.event_poll_s * 1000:.0f} ms (web.event_poll_s)")
            if broker.running is False:
                raise RuntimeError(f"broker exited during the run:\n{broker.log_tail(10)}")
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cloud_bench", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=50, help="training requests (command latency)")
    p.add_argument("-m", type=int, default=100, help="progress messages (event-stream latency)")
    p.add_argument("--interval", type=float, default=0.3, help="seconds between training requests")
    p.add_argument("--rate", type=float, default=20.0, help="progress messages per second")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests first")
    p.add_argument("--broker", choices=KINDS, default="embedded")
    p.add_argument("--in-process", action="store_true", help="listener, worker and web as threads of this process")
    p.add_argument("--event-poll", type=float, default=None,
                   help="web.event_poll_s in seconds (default: the shipped config's)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound on each phase (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.n < 1 or args.m < 1 or args.interval < 0 or args.rate <= 0 or args.warmup < 0:
        p.error("-n and -m must be at least 1, --interval at least 0, --rate above 0, --warmup at least 0")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    notes: list[str] = []
    metrics: list[Metric] = []
    failed = ""
    with tempfile.TemporaryDirectory(prefix="cloud-bench-") as tmp:
        try:
            run(args, Path(tmp), metrics, notes)
        except (BrokerError, RuntimeError, OSError) as exc:
            failed = f"failed: {exc}"
            log.error("cloud bench: %s", exc)
    done = {mt.name for mt in metrics}
    metrics += [Metric(name, want) for name, want in ((COMMAND, args.n), (RESPONSE, args.n), (PROGRESS, args.m))
                if name not in done]
    print(table(metrics, notes + ([failed] if failed else [])), flush=True)
    return 0 if not failed and all(mt.complete for mt in metrics) else 1


if __name__ == "__main__":
    sys.exit(main())
