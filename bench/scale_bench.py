"""A large plant on one machine: light-weight simulated nodes on the embedded broker and on Mosquitto.

    python -m bench.scale_bench [--lines 50] [--detectors 8] [--duration 60] [--kinds embedded,mosquitto] [--quick]

Every line has an edge and ``--detectors`` detectors, each a real MQTT client with its
own credentials under the project's ACL (bench.sim_nodes: hundreds of paho clients per
thread, in ``--procs`` processes). Detectors publish a retained DetectorStatus every
``--status-period`` s, some edges (``--training``) publish training progress at
``--progress-hz`` and epoch metrics; a cloud client follows every report topic and
sends commands to random lines. Measured per broker, one after the other with the
same clients: broker CPU and memory (/proc), command-to-edge latency, deliveries
(no QoS 1 loss), and, when the cloud app is there, its dashboard API latency under
that load (its listener and web app run as their own processes on SQLite).
"""

from __future__ import annotations

import argparse
import logging
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.scale_load import Plan, measure, median, pct, quick, users_for
from bench.sim_nodes import Traffic
from broker.harness import KINDS, BrokerError, BrokerProcess

log = logging.getLogger(__name__)

Row = tuple[str, dict[str, Any]]   # metric, kind -> number | text | None


def cloud_app_missing() -> str | None:
    """Why the cloud app cannot be benchmarked, or None when its web app can be built."""
    try:
        from cloud_app.web import create_app  # noqa: F401
    except Exception as exc:  # boundary: any import failure means "not available"
        return f"{type(exc).__name__}: {exc}"
    return None


def run_kind(kind: str, plan: Plan, tmp: Path, cloud: bool) -> dict[str, Any] | str:
    users = users_for(plan, lambda: secrets.token_urlsafe(16))
    broker = BrokerProcess(kind, tmp / kind, users, ["cloud"])
    try:
        broker.start()
        raw = measure(broker, plan, tmp / kind, cloud=cloud)
        if not broker.running:
            return f"broker exited during the run:\n{broker.log_tail(10)}"
        return raw
    except (BrokerError, RuntimeError, OSError) as exc:
        log.error("%s: %s", kind, exc)
        return f"failed: {exc}"
    finally:
        broker.stop()


def _ms(values: list[float] | None, q: float) -> float | None:
    v = pct(values or [], q)
    return None if v is None else v * 1000


def _share(pair: tuple[int, int]) -> float | None:
    sent, got = pair
    return 100.0 * got / sent if sent else None


def rows(raw: dict[str, Any], plan: Plan, cloud_note: str | None) -> list[Row]:
    cpu = raw.get("cpu_pct", {})
    out: list[Row] = [
        ("nodes connected", f"{raw['connected']}/{raw['nodes']}"),
        ("connect all nodes (s)", raw["connect_s"]),
        ("settle after traffic start (s)", raw["settle_s"]),
        ("reports to cloud (msg/s)", raw["cloud_rate"]),
        ("broker CPU (% of a core)", cpu.get("broker")),
        ("broker RSS end (MB)", raw["broker_rss"] / 2**20),
        ("broker RSS peak (MB)", raw["broker_rss_peak"] / 2**20),
        ("command->edge p50 (ms)", _ms(raw["cmd_latency"], 0.5)),
        ("command->edge p99 (ms)", _ms(raw["cmd_latency"], 0.99)),
        ("command->ack p50 (ms)", _ms(raw["rtt"], 0.5)),
        ("commands received", f"{raw['commands_received']}/{raw['commands_sent']}"),
        ("QoS1 delivered", f"{raw['qos1_received']}/{raw['qos1_sent']}"),
        ("QoS1 lost", raw["qos1_sent"] - raw["qos1_received"]),
        ("status to cloud (%)", _share(raw["qos0"]["detector_status"])),
        ("status to edges (%)", _share(raw["fanout"])),
        ("progress to cloud (%)", _share(raw["qos0"]["task_progress"])),
        ("unexpected disconnects", raw["disconnects"]),
        ("sim nodes CPU (% of a core)", sum(v for k, v in cpu.items() if k.startswith("sim")) or None),
    ]
    if "api" not in raw:
        note = "cloud app failed, see below" if raw.get("cloud_error") else cloud_note
        na = f"n/a ({note})" if note else "n/a"
        return out + [(m, na) for m in ("API /fleet p50 (ms)", "API /fleet p99 (ms)", "API /tasks p50 (ms)",
                                        "API /tasks p99 (ms)")]
    idle = raw["api_idle"]
    return out + [
        ("API /fleet idle p50 (ms)", _ms(idle["fleet"], 0.5)),
        ("API /fleet p50 (ms)", _ms(raw["api"]["fleet"], 0.5)),
        ("API /fleet p99 (ms)", _ms(raw["api"]["fleet"], 0.99)),
        ("API /tasks idle p50 (ms)", _ms(idle["tasks"], 0.5)),
        ("API /tasks p50 (ms)", _ms(raw["api"]["tasks"], 0.5)),
        ("API /tasks p99 (ms)", _ms(raw["api"]["tasks"], 0.99)),
        ("API errors", len(raw["api_errors"])),
        ("dashboard status age p50 (s)", median(raw["ages"])),
        ("dashboard status age max (s)", max(raw["ages"]) if raw["ages"] else None),
        ("tasks seen running", f"{raw['tasks_running']}/{raw['tasks_total']}"),
        ("cloud listener CPU (% of a core)", cpu.get("listener")),
        ("cloud web CPU (% of a core)", cpu.get("web")),
    ]


def _cell(v: Any) -> str:
    if v is None:
        return f"{'n/a':>12}"
    if isinstance(v, str):
        return f"{v:>12}"
    return f"{v:12.0f}" if isinstance(v, int) or abs(v) >= 100 else f"{v:12.2f}"


def table(results: dict[str, dict[str, Any] | str], plan: Plan, cloud_note: str | None) -> str:
    per_kind = {k: dict(rows(r, plan, cloud_note)) for k, r in results.items() if isinstance(r, dict)}
    metrics = next((list(r) for r in per_kind.values()), [])
    lines = [f"{'metric':34} {'embedded':>12} {'mosquitto':>12} {'ratio':>8}", "-" * 69]
    for m in metrics:
        vals = {k: per_kind.get(k, {}).get(m) for k in KINDS}
        e, q = vals["embedded"], vals["mosquitto"]
        both = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (e, q))
        ratio = f"{e / q:8.2f}" if both and q else f"{'':>8}"
        ran = {str(per_kind[k].get(m)) for k in per_kind}
        if len(ran) == 1 and next(iter(ran)).startswith("n/a ("):   # one explanation across the row
            lines.append(f"{m:34} {next(iter(ran))}")
            continue
        lines.append(f"{m:34} {_cell(e)} {_cell(q)} {ratio}")
    lines.append("ratio = embedded / mosquitto; CPU is process CPU time over the measured window "
                 f"({plan.duration:.0f} s)")
    lines += [f"note: {k}: {r}" for k, r in results.items() if isinstance(r, str)]
    lines += [f"note: {k}: cloud app: {r['cloud_error']}" for k, r in results.items()
              if isinstance(r, dict) and r.get("cloud_error")]
    lines += [f"note: {k}: QoS1 lost by topic: {r['qos1_lost']}" for k, r in results.items()
              if isinstance(r, dict) and r.get("qos1_lost")]
    lines.append(holds(per_kind, plan))
    return "\n".join(lines)


def holds(per_kind: dict[str, dict[str, Any]], plan: Plan) -> str:
    """One line: what this machine held, each broker's share, and the busiest process's linear limit."""
    nodes = plan.lines * (plan.detectors + 1)
    rate = max((r.get("reports to cloud (msg/s)") or 0 for r in per_kind.values()), default=0)
    brokers = [f"{k} {r['broker CPU (% of a core)']:.0f}%" for k, r in per_kind.items()
               if isinstance(r.get("broker CPU (% of a core)"), float)]
    busiest = max(((r.get(m) or 0, m.removesuffix(" CPU (% of a core)"), k) for k, r in per_kind.items()
                   for m in r if m.endswith(" CPU (% of a core)") and not m.startswith("sim ")), default=(0, "", ""))
    text = (f"one machine held {plan.lines} lines x {plan.detectors} detectors ({nodes} MQTT clients + cloud, "
            f"{rate:.0f} reports/s): broker CPU {', '.join(brokers) or 'n/a'} of a core")
    if busiest[0] > 0:
        text += (f"; busiest: {busiest[1]} ({busiest[2]} run) at {busiest[0]:.0f}% of a core, "
                 f"~{100 / busiest[0]:.1f}x this plant before it fills one core (if linear)")
    return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.scale_bench", description=__doc__.splitlines()[0])
    d = Plan()
    p.add_argument("--lines", type=int, default=d.lines)
    p.add_argument("--detectors", type=int, default=d.detectors, help="detectors per line")
    p.add_argument("--training", type=int, default=d.training, help="edges publishing training progress")
    p.add_argument("--duration", type=float, default=d.duration, help="measured window per broker (s)")
    p.add_argument("--status-period", type=float, default=d.traffic.status_period, help="s between detector status")
    p.add_argument("--progress-hz", type=float, default=d.traffic.progress_hz)
    p.add_argument("--command-rate", type=float, default=d.command_rate, help="commands per second")
    p.add_argument("--api-rate", type=float, default=d.api_rate, help="dashboard API requests per second")
    p.add_argument("--procs", type=int, default=d.procs, help="processes holding the simulated nodes")
    p.add_argument("--kinds", default=",".join(KINDS), help="brokers to run, comma separated")
    p.add_argument("--no-cloud", action="store_true", help="skip the cloud app (no dashboard API rows)")
    p.add_argument("--quick", action="store_true", help="a small plant for a smoke run")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = Plan(lines=args.lines, detectors=args.detectors, training=min(args.training, args.lines),
                duration=args.duration, command_rate=args.command_rate, api_rate=args.api_rate, procs=args.procs,
                traffic=Traffic(status_period=args.status_period, progress_hz=args.progress_hz))
    if args.quick:
        plan = quick(plan)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        print(f"unknown broker kinds {unknown} (expected {list(KINDS)})", file=sys.stderr)
        return 2
    cloud_note = "disabled by --no-cloud" if args.no_cloud else cloud_app_missing()
    if cloud_note and not args.no_cloud:
        log.warning("cloud app not available: %s", cloud_note)
        cloud_note = "cloud app not available"
    results: dict[str, dict[str, Any] | str] = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        for kind in kinds:
            log.info("%s: %d lines x %d detectors", kind, plan.lines, plan.detectors)
            results[kind] = run_kind(kind, plan, Path(tmp), cloud=cloud_note is None)
    print(table(results, plan, cloud_note))
    return 0 if all(isinstance(r, dict) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
