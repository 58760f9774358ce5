"""Run the system on embedded defaults: ``python -m demo`` (``make demo``).

Today it brings up the embedded broker with generated credentials and ACL, the
nodes of a two-line plant announcing themselves on the bus (birth and last will),
and a cloud-side bus monitor that prints every message it receives. The cloud app,
edge and detector processes join it as they are built.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from broker.harness import BrokerProcess, free_port
from demo.fleet import CLOUD_USERS, credentials, plant
from fabbus.client import BusClient, MqttConfig, ReceivedMessage

log = logging.getLogger("demo")


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("var/demo"), help="state, logs and credentials (var/demo)")
    p.add_argument("--port", type=int, default=0, help="broker port (default: 1884 if free, else any free port)")
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    return p.parse_args(argv)


def _port(wanted: int) -> int:
    if wanted:
        return wanted
    try:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 1884))
        return 1884
    except OSError:
        return free_port()


def _monitor(msg: ReceivedMessage) -> None:
    body = msg.message.body
    print(f"{time.strftime('%H:%M:%S')}  {msg.topic_name:<16} {msg.topic:<44} {type(body).__name__} "
          f"{body.model_dump_json(exclude_defaults=True)[:120]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    nodes = plant()
    users = credentials(args.workdir / "credentials.json", nodes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    broker = BrokerProcess("embedded", args.workdir / "broker", users, list(CLOUD_USERS), port=_port(args.port))
    clients: list[BusClient] = []
    try:
        broker.start()
        print(f"broker      mqtt://{broker.host}:{broker.port}  (embedded amqtt, log {broker.log_path})")
        print(f"credentials {args.workdir / 'credentials.json'}  (cloud user: cloud)")
        monitor = BusClient(MqttConfig(port=broker.port, username="cloud", password=users["cloud"]),
                            "cloud", {"node": "demo-monitor"})
        for name in ("cloud_state", "edge_state", "detector_state", "task_status", "task_progress",
                     "delivery_status", "detector_status", "edge_error", "detector_error"):
            monitor.subscribe(name, _monitor)
        clients.append(monitor.connect())
        for node in nodes[1:]:
            c = BusClient(MqttConfig(port=broker.port, password=users[node.username]), node.role, node.ids)
            clients.append(c.connect())
        print("the plant is up; Ctrl-C stops it\n")
        stop.wait(args.duration or None)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # boundary: the CLI
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for c in reversed(clients):
            c.close()
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
