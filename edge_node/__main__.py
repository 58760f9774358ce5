"""``python -m edge_node``: run a line's edge server, or check its config.

    python -m edge_node --config config/edge.yaml                  # until SIGTERM / SIGINT
    python -m edge_node --config config/edge.yaml --check-config   # one line per bad key, exit 2

Secrets come from the environment: the MQTT password (``mqtt.password_env``, default
FAB_MQTT_PASSWORD) and each detector's history token (``detectors.<det>.token_env``,
default FAB_HISTORY_TOKEN). SIGTERM or SIGINT stop the edge cleanly: the running task
stops where it is (it resumes at the next start) and the offline state is published.
Exit status: 0 after a clean shutdown, 2 for a bad config, 1 when the edge cannot start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from edge_node.config import load_config
from fabbus.acks import AuthenticationError
from fabbus.errors import ConfigError

log = logging.getLogger("edge_node")

EXIT_CONFIG, EXIT_START = 2, 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_node", description="A production line's edge server.")
    p.add_argument("--config", type=Path, default=Path("config/edge.yaml"), help="YAML config (%(default)s)")
    p.add_argument("--check-config", action="store_true", help="validate the config and its secrets, then exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _error(message: object) -> None:
    for line in str(message).splitlines():
        print(f"edge_node: error: {line}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    problems = cfg.secret_problems()
    if problems:
        for problem in problems:
            _error(f"{args.config}: {problem}")
        return EXIT_CONFIG
    if args.check_config:
        print(f"{args.config}: OK (edge {cfg.ids.site}/{cfg.ids.line}, {len(cfg.detectors)} detector(s), "
              f"{len(cfg.brands)} brand(s))")
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edge_node.node import (
        EdgeNode,  # TensorFlow loads here, after the config is known to be good
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    try:
        node = EdgeNode(cfg)
    except OSError as exc:
        _error(f"cannot start: {exc}")
        return EXIT_START
    try:
        node.start()
    except (AuthenticationError, OSError) as exc:
        _error(f"cannot start: {exc}")
        node.close()
        return EXIT_START
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    node.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
