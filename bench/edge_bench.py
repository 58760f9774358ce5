"""The edge's data economy: incremental history sync, and what a training task puts on the broker.

    python -m bench.edge_bench [--per-class 100] [--size 64] [--epochs 2] [--sync-per-class 300]

Sync: a detector's real history server (detector_node) holds ``--sync-per-class``
simulator images of 3 classes; the edge's Collector syncs it into an empty dataset
cache (first sync: every image downloaded and verified), then again with nothing
new (the figure the design cares about: listing only, no download), then after 2%
new images. Time is wall time of ``Collector.collect``; requests and TCP connections
are counted by the client.

Broker bytes: one training task end to end on the embedded broker: a real EdgeNode
trains ``--per-class`` images per class of ``--size`` px (from a history server) and
uploads the bundle to a minimal cloud (fabbus Receiver, TransferResult ACCEPTED); a
subscriber to ``fab/v1/#`` counts every payload by kind against the PNG bytes of the
images used. Raw images never go on the bus: what does is commands, status, progress,
metrics, and the model file itself.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import SecretStr

from broker.harness import BrokerProcess
from detector_node.camera_sim import CameraSimulator
from detector_node.history import History, HistoryConfig
from detector_node.history_server import HistoryServer, HistoryServerConfig
from edge_node.collector import Collector
from edge_node.config import BrandSection, DetectorLink, EdgeConfig, EdgeIds
from edge_node.dataset import DatasetCache
from fabbus.acl import username_for
from fabbus.client import BusClient, MqttConfig, ReceivedMessage
from fabbus.messages import TaskStatus, TrainCommand, TransferResult
from fabbus.training_config import TrainingConfig
from fabbus.transfer import Receiver, TransferStatus

log = logging.getLogger(__name__)

BRAND, CLASSES = "brandB", ["good", "scratch", "spot"]
TOKEN = secrets.token_urlsafe(24)
EDGE = {"site": "s1", "line": "l1"}
KB = 1000


def fill(root: Path, per_class: int, size: int, first: int = 0) -> int:
    """Simulator images in a detector history; their PNG bytes."""
    cam = CameraSimulator(BRAND, size=size, seed=0)
    total = 0
    with History(HistoryConfig(root=root)) as history:
        for k, label in enumerate(CLASSES):
            for i in range(first, first + per_class):
                total += history.add(cam.render(1000 * k + i, label), BRAND, label).size
    return total


def edge_config(workdir: Path, url: str, mqtt_config: MqttConfig | None = None) -> EdgeConfig:
    return EdgeConfig(ids=EdgeIds(**EDGE), mqtt=mqtt_config or MqttConfig(),
                      detectors={"d1": DetectorLink(url=url, token=TOKEN)},
                      brands={BRAND: BrandSection(classes=CLASSES)}, workdir=workdir)


# ---- incremental sync ----------------------------------------------------------------------------

def bench_sync(tmp: Path, per_class: int, size: int) -> list[tuple[str, str, str, str, str]]:
    raw = fill(tmp / "sync-history", per_class, size)
    rows = []
    with History(HistoryConfig(root=tmp / "sync-history")) as history, \
            HistoryServer(history, HistoryServerConfig(port=0, tokens=[SecretStr(TOKEN)])) as server:
        cfg = edge_config(tmp / "sync-edge", server.url)
        cfg.workdir.mkdir(parents=True)
        cache = DatasetCache(cfg.workdir / "dataset")
        collector = Collector(cfg, cache, cfg.workdir / "collection.db")
        try:
            first = None
            for name in ("first sync", "unchanged", "2% new"):
                if name == "2% new":
                    fill(tmp / "sync-history", max(1, per_class // 50), size, first=per_class)
                client = collector.client("d1")
                before = dict(client.stats)
                t0 = time.perf_counter()
                got = collector.collect(name, ["d1"], BRAND, CLASSES)
                seconds = time.perf_counter() - t0
                first = first or seconds
                st = got.details["collection"]["d1"]
                reqs = client.stats["requests"] - before["requests"]
                rows.append((name, f"{seconds * 1000:.1f} ms", f"{100 * seconds / first:.1f}%",
                             f"{st['fetched']} of {st['known'] + st['listed']} ({st['bytes'] / KB:.0f} kB)",
                             f"{reqs} req, {client.stats['connections'] - before['connections']} conn"))
        finally:
            collector.close()
            cache.close()
    print(f"\nincremental sync: 1 detector, {3 * per_class} images of {size}x{size} px ({raw / KB:.0f} kB PNG)")
    _table(("sync", "time", "vs first", "downloaded", "HTTP"), rows)
    return rows


# ---- broker bytes per training task ----------------------------------------------------------------

class Spy:
    """A cloud-user paho client subscribed to fab/v1/#: every payload's size, by topic kind."""

    def __init__(self, b: BrokerProcess) -> None:
        self.sizes: dict[str, list[int]] = {}
        self.png = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-bench-spy-{os.getpid()}",
                                  protocol=MQTTProtocolVersion.MQTTv311)
        self.client.username_pw_set("cloud", b.users["cloud"])
        self.client.on_message = self._on_message
        self.client.connect(b.host, b.port)
        self.client.subscribe("fab/v1/#", 1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind = next((k for k in ("/upload/", "/progress", "/metrics", "/status", "/cmd", "/state") if k in msg.topic),
                    "other")
        with self._lock:
            self.sizes.setdefault(kind, []).append(len(msg.payload))
            self.png += b"\x89PNG" in msg.payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


class AcceptingCloud:
    """Receives uploads with a fabbus Receiver and answers ACCEPTED; records task statuses."""

    def __init__(self, b: BrokerProcess, tmp: Path) -> None:
        self.done = threading.Event()
        self.final: TaskStatus | None = None
        self.client = BusClient(MqttConfig(host=b.host, port=b.port, username="cloud", password=b.users["cloud"]),
                                "cloud", {"node": "edge-bench"})
        self.receiver = Receiver(lambda m: tmp / f"{m.sha256}.zip", on_status=self._uploaded,
                                 request=lambda req: self.client.publish("model_upload_request", req, **EDGE,
                                                                         model=req.model))
        self.client.subscribe("model_upload_manifest", self.receiver.on_manifest)
        self.client.subscribe("model_upload_chunk", self.receiver.on_chunk)
        self.client.subscribe("task_status", self._on_status)
        self.client.connect()

    def _uploaded(self, s: TransferStatus) -> None:
        if s.state == "COMPLETE":
            self.client.publish("model_upload_result", TransferResult(model=s.model, state="ACCEPTED", version=1),
                                **EDGE, model=s.model)

    def _on_status(self, msg: ReceivedMessage) -> None:
        status: TaskStatus = msg.body  # type: ignore[assignment]
        if status.state.value in ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED"):
            self.final = status
            self.done.set()

    def close(self) -> None:
        self.receiver.close()
        self.client.close()


def bench_bytes(tmp: Path, per_class: int, size: int, epochs: int) -> dict[str, Any]:
    from edge_node.node import EdgeNode  # TensorFlow

    users = {"cloud": secrets.token_urlsafe(16), username_for("edge", **EDGE): secrets.token_urlsafe(16)}
    raw = fill(tmp / "train-history", per_class, size)
    b = BrokerProcess("embedded", tmp / "broker", users, ["cloud"]).start()
    history = History(HistoryConfig(root=tmp / "train-history"))
    server = HistoryServer(history, HistoryServerConfig(port=0, tokens=[SecretStr(TOKEN)])).start()
    spy, cloud, node = Spy(b), AcceptingCloud(b, tmp), None
    try:
        mq = MqttConfig(host=b.host, port=b.port, password=users[username_for("edge", **EDGE)])
        node = EdgeNode(edge_config(tmp / "train-edge", server.url, mq)).start()
        config = TrainingConfig(classes=CLASSES, input_size=size, epochs=epochs)
        t0 = time.perf_counter()
        cloud.client.publish("edge_command", TrainCommand(task="bench", brand=BRAND, detectors=["d1"], config=config),
                             **EDGE, correlation_id="bench").wait(10)
        if not cloud.done.wait(600) or cloud.final is None or cloud.final.state.value != "SUCCEEDED":
            raise RuntimeError(f"the training task did not succeed: {cloud.final}")
        seconds = time.perf_counter() - t0
        time.sleep(0.5)  # the last QoS 0 messages
    finally:
        if node is not None:
            node.close()
        cloud.close()
        spy.close()
        server.close()
        history.close()
        b.stop()
    sizes = spy.sizes
    total = sum(sum(v) for v in sizes.values())
    model = sum(sizes.get("/upload/", []))
    rows = [(kind.strip("/"), str(len(v)), f"{sum(v) / KB:.1f} kB", f"{100 * sum(v) / raw:.2f}%")
            for kind, v in sorted(sizes.items(), key=lambda kv: -sum(kv[1]))]
    rows += [("all but the model", str(sum(len(v) for k, v in sizes.items() if k != "/upload/")),
              f"{(total - model) / KB:.1f} kB", f"{100 * (total - model) / raw:.2f}%"),
             ("total", str(sum(len(v) for v in sizes.values())), f"{total / KB:.1f} kB", f"{100 * total / raw:.2f}%")]
    print(f"\nbroker bytes per training task: {3 * per_class} images of {size}x{size} px ({raw / KB:.0f} kB PNG), "
          f"{epochs} epoch(s), task {seconds:.1f} s; payloads with a PNG signature: {spy.png}")
    _table(("topics", "messages", "payload", "vs raw images"), rows)
    return {"raw": raw, "total": total, "model": model, "png": spy.png}


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, tuple("-" * w for w in widths), *rows):
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.edge_bench", description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=100, help="training images per class (3 classes)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (training and sync)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--sync-per-class", type=int, default=300, help="history images per class for the sync figures")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        bench_sync(Path(tmp), args.sync_per_class, args.size)
        result = bench_bytes(Path(tmp), args.per_class, args.size, args.epochs)
    return 1 if result["png"] else 0


if __name__ == "__main__":
    sys.exit(main())
