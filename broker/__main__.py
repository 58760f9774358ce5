"""``python -m broker`` / ``fab-broker``: run the hardened embedded broker, check its config, manage passwords.

    python -m broker --config config/broker.yaml          # run until SIGTERM/SIGINT (SIGHUP reloads users/ACL)
    python -m broker --config config/broker.yaml --check-config
    python -m broker passwd var/broker/passwd cloud        # password from stdin or --password

Bad configuration exits 2, a broker that cannot start exits 1; either way with a
one-line message per problem and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
from pathlib import Path

from broker.access import Access
from broker.auth import Authenticator, set_password
from broker.config import BrokerConfig, load_config
from broker.server import BrokerStartError, FabBroker, ssl_context
from fabbus.errors import ConfigError

log = logging.getLogger("broker")

EXIT_CONFIG, EXIT_START = 2, 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fab-broker", description="The embedded MQTT 3.1.1 broker (hardened amqtt).")
    p.add_argument("--config", type=Path, default=Path("config/broker.yaml"), help="YAML config (default: %(default)s)")
    p.add_argument("--check-config", action="store_true", help="validate the config and the files it names, then exit")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    pw = sub.add_parser("passwd", help="add or update a user in a Mosquitto-format password file")
    pw.add_argument("file", type=Path)
    pw.add_argument("username")
    pw.add_argument("--password", help="the password (default: read from stdin)")
    return p


def _error(message: object) -> None:
    for line in str(message).splitlines():
        print(f"fab-broker: error: {line}", file=sys.stderr)


def check_files(cfg: BrokerConfig) -> list[str]:
    """Problems with the files the config names (password file, ACL file, TLS), one line each."""
    problems = []
    checks = [lambda: Authenticator(cfg.password_file, cfg.allow_anonymous, 1).close(),
              lambda: Access(cfg.acl_file)]
    if cfg.listener.tls:
        checks.append(lambda: ssl_context(cfg.listener.tls))
    for check in checks:
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    return problems


async def serve(cfg: BrokerConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (default: SIGTERM or SIGINT), then shut down cleanly (state saved).

    Without ``stop`` (the main thread of a process) SIGHUP re-reads the password and ACL files.
    """
    loop = asyncio.get_running_loop()
    broker = FabBroker(cfg)
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, broker.reload)
    await broker.start()
    await stop.wait()
    log.info("shutting down")
    await broker.shutdown()
    log.info("stopped")


def _passwd(args: argparse.Namespace) -> int:
    password = args.password
    if password is None:
        if sys.stdin.isatty():
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                _error("passwords differ")
                return EXIT_CONFIG
        else:
            password = sys.stdin.readline().rstrip("\r\n")
    try:
        set_password(args.file, args.username, password)
    except (ConfigError, OSError) as exc:
        _error(exc)
        return EXIT_CONFIG
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "passwd":
        return _passwd(args)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    if args.check_config:
        problems = check_files(cfg)
        for p in problems:
            _error(p)
        if not problems:
            print(f"{args.config}: OK")
        return EXIT_CONFIG if problems else 0
    try:
        asyncio.run(serve(cfg))
    except ConfigError as exc:
        _error(exc)
        return EXIT_CONFIG
    except BrokerStartError as exc:
        _error(exc)
        return EXIT_START
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
