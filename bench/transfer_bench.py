"""Model delivery throughput over the bus, next to the broker's raw throughput, for each broker.

    python -m bench.transfer_bench [--size-mb 25] [--raw-mb 20] [--detectors 1,4] [--chunks-kb 64,128,256,512,1024]

For each broker (embedded and Mosquitto, on free ports with the project's password
and ACL files): the raw figure is one ``--raw-mb`` QoS 1 publish from a plain paho
client to a subscriber process (first byte sent to whole message received). The
delivery figure is fabbus.transfer end to end: an edge BusClient sends a
``--size-mb`` file with Sender (manifest, then chunks with a bounded window) to
1 and to N detector processes, each a BusClient with a Receiver that verifies the
sha256 and renames the file into place; the time runs from the first publish to
the last detector's COMPLETE. Every chunk size of ``--chunks-kb`` is tried with
one detector; the best one is used for the others. MB/s is 10^6 bytes per second
of one file (to N detectors, each gets the whole file); "aggregate" is N times that,
the bytes the broker carried to detectors per second.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from broker.harness import KINDS, BrokerError, BrokerProcess
from fabbus.acl import username_for
from fabbus.client import BusClient, MqttConfig
from fabbus.transfer import Receiver, Sender, TransferStatus, bus_publisher, make_manifest

log = logging.getLogger(__name__)

CLOUD = "cloud"
EDGE = {"site": "s1", "line": "l1"}
BRAND = "bench"
RAW_TOPIC = "fab/v1/s1/l1/det/raw/model/bench/chunk"
MB = 1_000_000


def _det_ids(i: int) -> dict[str, str]:
    return {**EDGE, "det": f"d{i}"}


def _config(b: BrokerProcess, password: str, **kw: Any) -> MqttConfig:
    return MqttConfig(host=b.host, port=b.port, password=password, connect_timeout=20, **kw)


# ---- child processes --------------------------------------------------------------------------

def _detector(host: str, port: int, password: str, det: int, workdir: str, ready: Any, results: Any,
              stop: Any) -> None:
    """A detector: receives deliveries for BRAND, reports (det, model, time, state, reason) for each end."""
    logging.basicConfig(level=logging.WARNING)
    cfg = MqttConfig(host=host, port=port, password=password, connect_timeout=20)
    client = BusClient(cfg, "detector", _det_ids(det))

    def on_status(s: TransferStatus) -> None:
        if s.done:
            results.put((det, s.model, time.perf_counter(), s.state, s.reason))
            if s.path is not None:
                s.path.unlink(missing_ok=True)

    receiver = Receiver(lambda m: Path(workdir) / f"d{det}" / f"{m.model}.zip", on_status=on_status,
                        request=lambda req: client.publish("delivery_request", req, brand=BRAND))
    client.subscribe("delivery_manifest", receiver.on_manifest, brand=BRAND)
    client.subscribe("delivery_chunk", receiver.on_chunk, brand=BRAND)
    try:
        client.connect()
        ready.put(det)
        stop.wait()
    finally:
        receiver.close()
        client.close()


def _raw_subscriber(host: str, port: int, password: str, ready: Any, results: Any, n: int) -> None:
    """Receives ``n`` raw messages on RAW_TOPIC; reports (receive time, size) of each."""
    got = threading.Event()
    count = [0]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-raw-sub-{os.getpid()}",
                    protocol=MQTTProtocolVersion.MQTTv311)
    c.username_pw_set(CLOUD, password)

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        results.put((time.perf_counter(), len(msg.payload)))
        count[0] += 1
        if count[0] >= n:
            got.set()

    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.put("ready")
    c.on_connect = lambda client, *a: client.subscribe(RAW_TOPIC, 1)
    c.connect(host, port, 60)
    c.loop_start()
    try:
        got.wait(300)
    finally:
        c.disconnect()
        c.loop_stop()


# ---- measurements -----------------------------------------------------------------------------

def raw_throughput(b: BrokerProcess, size: int, repeat: int, timeout: float) -> float:
    """Best MB/s of ``repeat`` single ``size``-byte QoS 1 publishes through the broker."""
    ctx = mp.get_context("spawn")
    ready, results = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_raw_subscriber, args=(b.host, b.port, b.users[CLOUD], ready, results, repeat),
                       daemon=True)
    proc.start()
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw-pub", protocol=MQTTProtocolVersion.MQTTv311)
    pub.username_pw_set(CLOUD, b.users[CLOUD])
    payload = os.urandom(size)
    best = 0.0
    try:
        ready.get(timeout=30)
        pub.connect(b.host, b.port, 60)
        pub.loop_start()
        for _ in range(repeat):
            t0 = time.perf_counter()
            pub.publish(RAW_TOPIC, payload, 1).wait_for_publish(timeout)
            t1, n = results.get(timeout=timeout)
            if n != size:
                raise RuntimeError(f"raw message arrived with {n} of {size} bytes")
            best = max(best, size / MB / (t1 - t0))
    finally:
        pub.disconnect()
        pub.loop_stop()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return best


class Fleet:
    """An edge client in this process and ``n`` detector processes on one broker."""

    def __init__(self, b: BrokerProcess, n: int, workdir: Path) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.results, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.procs = [ctx.Process(target=_detector, daemon=True, args=(
            b.host, b.port, b.users[username_for("detector", **_det_ids(i))], i, str(workdir), self.ready,
            self.results, self.stop)) for i in range(1, n + 1)]
        self.senders: dict[int, Sender] = {}
        self.edge = BusClient(_config(b, b.users[username_for("edge", **EDGE)]), "edge", EDGE)
        for i in range(1, n + 1):
            self.edge.subscribe("delivery_request", lambda msg, i=i: self.senders[i].on_request(msg),
                                det=f"d{i}", brand=BRAND)

    def __enter__(self) -> Fleet:
        for p in self.procs:
            p.start()
        self.edge.connect()
        for _ in self.procs:
            self.ready.get(timeout=60)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.edge.close()
        for p in self.procs:
            p.join(15)
            if p.is_alive():
                p.kill()
                p.join()

    def deliver(self, src: Path, model: str, chunk_size: int, dets: list[int], timeout: float) -> float:
        """Seconds from the first publish to the last detector's COMPLETE."""
        manifest = make_manifest(src, model=model, brand=BRAND, chunk_size=chunk_size)
        self.senders.update({i: Sender(src, manifest, bus_publisher(self.edge, "delivery_manifest", "delivery_chunk",
                                                                     det=f"d{i}", brand=BRAND)) for i in dets})
        errors: list[BaseException] = []

        def run(sender: Sender) -> None:
            try:
                sender.send()
                sender.serve(timeout)
            except Exception as exc:  # boundary: reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(self.senders[i],)) for i in dets]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        try:
            ends = [self.results.get(timeout=timeout) for _ in dets]
        finally:
            for i in dets:
                self.senders[i].close()
            for t in threads:
                t.join(timeout)
        failed = [e for e in ends if e[1] != model or e[3] != "COMPLETE"] + errors
        if failed:
            raise RuntimeError(f"delivery of {model} failed: {failed}")
        return max(e[2] for e in ends) - t0


def run_broker(b: BrokerProcess, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    src = workdir / "model.bin"
    src.write_bytes(os.urandom(int(args.size_mb * MB)))
    raw = raw_throughput(b, int(args.raw_mb * MB), args.repeat, args.timeout)
    counts = sorted({int(n) for n in args.detectors.split(",")})
    with Fleet(b, max(counts), workdir) as fleet:
        runs = 0

        def measure(n: int, chunk_kb: int) -> None:
            nonlocal runs
            best = float("inf")
            for _ in range(args.repeat):
                runs += 1
                best = min(best, fleet.deliver(src, f"m{runs}", chunk_kb * 1024, list(range(1, n + 1)),
                                               args.timeout))
            rate = src.stat().st_size / MB / best
            rows.append({"broker": b.kind, "detectors": n, "chunk_kb": chunk_kb, "seconds": best, "mbps": rate,
                         "raw": raw})
            log.info("%s: %d detector(s), %d KB chunks: %.1f MB/s", b.kind, n, chunk_kb, rate)

        for chunk_kb in [int(c) for c in args.chunks_kb.split(",")]:
            measure(counts[0], chunk_kb)
        chosen = max((r for r in rows if r["detectors"] == counts[0]), key=lambda r: r["mbps"])["chunk_kb"]
        for n in counts[1:]:
            measure(n, chosen)
    return rows


def table(rows: list[dict[str, Any]], notes: list[str], size_mb: float, raw_mb: float) -> str:
    lines = [f"delivery of a {size_mb:g} MB file vs one raw {raw_mb:g} MB publish (MB/s = 10^6 B/s of one file)",
             f"{'broker':10} {'detectors':>9} {'chunk':>8} {'seconds':>8} {'delivery MB/s':>14} "
             f"{'aggregate':>10} {'raw MB/s':>9} {'raw/delivery':>13}", "-" * 88]
    for r in rows:
        lines.append(f"{r['broker']:10} {r['detectors']:>9} {r['chunk_kb']:>5} KB {r['seconds']:>8.2f} "
                     f"{r['mbps']:>14.1f} {r['mbps'] * r['detectors']:>10.1f} {r['raw']:>9.1f} "
                     f"{r['raw'] / r['mbps']:>13.2f}")
    for kind in dict.fromkeys(r["broker"] for r in rows):
        ones = [r for r in rows if r["broker"] == kind and r["detectors"] == min(x["detectors"] for x in rows)]
        best = max(ones, key=lambda r: r["mbps"])
        lines.append(f"{kind}: best chunk size {best['chunk_kb']} KB ({best['mbps']:.1f} MB/s, "
                     f"goal raw/delivery <= 2: {'met' if best['raw'] / best['mbps'] <= 2 else 'NOT met'})")
    return "\n".join(lines + [f"note: {n}" for n in notes])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transfer_bench", description=__doc__.splitlines()[0])
    p.add_argument("--size-mb", type=float, default=25.0, help="size of the delivered file (10^6 bytes)")
    p.add_argument("--raw-mb", type=float, default=20.0, help="size of the raw publish (10^6 bytes)")
    p.add_argument("--detectors", default="1,4", help="detector counts, comma separated")
    p.add_argument("--chunks-kb", default="64,128,256,512,1024", help="chunk sizes tried with the first count")
    p.add_argument("--repeat", type=int, default=2, help="runs per figure (the best is shown)")
    p.add_argument("--timeout", type=float, default=120.0, help="bound on each run (s)")
    p.add_argument("--kinds", default=",".join(KINDS), help="brokers to run, comma separated")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dets = max(int(n) for n in args.detectors.split(","))
    users = {CLOUD: secrets.token_urlsafe(16), username_for("edge", **EDGE): secrets.token_urlsafe(16),
             **{username_for("detector", **_det_ids(i)): secrets.token_urlsafe(16) for i in range(1, dets + 1)}}
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        for kind in [k for k in args.kinds.split(",") if k]:
            b = BrokerProcess(kind, Path(tmp) / kind, users, [CLOUD])
            try:
                b.start()
                rows += run_broker(b, args, Path(tmp) / kind)
            except (BrokerError, RuntimeError, OSError, TimeoutError) as exc:
                notes.append(f"{kind}: failed: {exc}")
                log.error("%s broker: %s", kind, exc)
            except Exception as exc:  # boundary: one broker's failure never hides the other's figures
                notes.append(f"{kind}: failed: {type(exc).__name__}: {exc}")
                log.exception("%s broker failed", kind)
            finally:
                if b.running is False and not any(r["broker"] == kind for r in rows):
                    notes.append(f"{kind}: broker log tail:\n{b.log_tail(10)}")
                b.stop()
    print(table(rows, notes, args.size_mb, args.raw_mb))
    return 0 if rows and not notes else 1


if __name__ == "__main__":
    sys.exit(main())
