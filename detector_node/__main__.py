"""``python -m detector_node``: run an inspection station, or check its config.

    python -m detector_node --config config/detector.yaml                  # until SIGTERM / SIGINT
    python -m detector_node --config config/detector.yaml --check-config   # one line per bad key, exit 2
    python -m detector_node --config config/detector.yaml --simulate-mcu   # demo: MCU simulator on a pty

Secrets come from the environment: the MQTT password (``mqtt.password_env``,
default FAB_MQTT_PASSWORD) and the edges' history tokens (``history_server.tokens_env``,
default FAB_EDGE_TOKENS, comma-separated). SIGTERM or SIGINT shut the station down
cleanly: LIGHT OFF, final status, offline state on the bus. Exit status: 0 after a
clean shutdown, 2 for a bad config, 1 when the station cannot start.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from fabbus.acks import AuthenticationError
from fabbus.errors import ConfigError

from detector_node.config import DetectorConfig, load_config
from detector_node.errors import DetectorError
from detector_node.mcu_sim import McuSimulator
from detector_node.node import DetectorNode

log = logging.getLogger("detector_node")

EXIT_CONFIG, EXIT_START = 2, 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m detector_node", description="An inspection station (detector).")
    p.add_argument("--config", type=Path, default=Path("config/detector.yaml"), help="YAML config (%(default)s)")
    p.add_argument("--check-config", action="store_true", help="validate the config and its secrets, then exit")
    p.add_argument("--simulate-mcu", action="store_true",
                   help="start the MCU simulator (config: simulator) on a pty in-process and inspect its triggers")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def _error(message: object) -> None:
    for line in str(message).splitlines():
        print(f"detector_node: error: {line}", file=sys.stderr)


def check(cfg: DetectorConfig) -> list[str]:
    """Problems beyond the schema: secrets that must be in the environment."""
    problems = []
    if cfg.history_server.enabled:
        try:
            cfg.history_server.build()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    problems = check(cfg)
    if problems:
        for problem in problems:
            _error(f"{args.config}: {problem}")
        return EXIT_CONFIG
    if args.check_config:
        print(f"{args.config}: OK ({len(cfg.brands)} brand(s), detector {cfg.ids.site}/{cfg.ids.line}/{cfg.ids.det})")
        return 0

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.set())
    sim = McuSimulator(cfg.simulator) if args.simulate_mcu else None
    node = DetectorNode(cfg, serial_port=sim.device_path if sim else None)
    try:
        node.start()
    except (AuthenticationError, DetectorError, ConfigError, OSError) as exc:
        _error(f"cannot start: {exc}")
        node.close()
        if sim:
            sim.close()
        return EXIT_START
    if sim is not None:
        sim.start()
        print(f"MCU simulator on {sim.device_path}: {cfg.simulator.rate_hz} products/s", flush=True)
    while not stop.wait(0.5):
        pass
    log.info("shutting down")
    if sim is not None:
        print(f"MCU simulator: {sim.stop()}", flush=True)
    node.close()
    if sim is not None:
        sim.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
