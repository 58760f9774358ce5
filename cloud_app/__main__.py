"""The cloud processes.

    python -m cloud_app [serve]      [--config config/cloud.yaml]   the web app (cloud_app.web)
    python -m cloud_app worker       [--workers N]                  huey consumer: dispatch, evaluation, follower
    python -m cloud_app listener                                    bus listener: persists reports, model transfers
    python -m cloud_app migrate                                     alembic upgrade head, fleet sync
    python -m cloud_app create-user NAME --role admin               password from $FAB_CLOUD_PASSWORD or a prompt
    python -m cloud_app --check-config                              one line per bad key; exit 2

The config file is --config, else $FAB_CLOUD_CONFIG, else config/cloud.yaml.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import threading
from typing import Any

from fabbus.errors import FabError

from cloud_app.config import CloudConfig, load_config

log = logging.getLogger("cloud_app")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloud_app", description="Cloud app: web, worker, listener")
    p.add_argument("--config", help="config file (default: $FAB_CLOUD_CONFIG or config/cloud.yaml)")
    p.add_argument("--check-config", action="store_true", help="validate the config, then exit")
    p.add_argument("--log-level", default=os.environ.get("FAB_LOG_LEVEL", "INFO"))
    sub = p.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="the web app (default)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    worker = sub.add_parser("worker", help="the huey consumer")
    worker.add_argument("--workers", type=int)
    sub.add_parser("listener", help="the bus listener")
    sub.add_parser("migrate", help="apply the database migrations and sync the fleet")
    user = sub.add_parser("create-user", help="add a user")
    user.add_argument("username")
    user.add_argument("--role", choices=("admin", "engineer", "viewer"), default="viewer")
    return p


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def cmd_serve(cfg: CloudConfig, args: argparse.Namespace) -> int:
    try:
        from cloud_app.web import close_app, create_app
    except ImportError as exc:
        print(f"the web layer is not available: {exc}", file=sys.stderr)
        return 1
    from werkzeug.serving import make_server

    app = create_app({"CLOUD_CONFIG": cfg})
    try:
        # a thread per request (the dashboard's event streams stay open); SIGTERM or Ctrl-C stops
        # accepting, and the app's connections are closed before the process exits 0
        server = make_server(args.host or cfg.web.host, args.port or cfg.web.port, app, threaded=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
        log.info("serving on http://%s:%s", server.host, server.port)
        server.serve_forever()
        server.server_close()
    finally:
        close_app(app)
    log.info("stopped")
    return 0


def cmd_worker(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_app.backend import Backend

    backend = Backend(cfg, role="worker")
    try:
        consumer = backend.tasks.start_consumer(args.workers)
        log.info("worker running (%s)", "Redis" if cfg.huey.url else f"SQLite {cfg.huey.sqlite_path}")
        _wait_for_signal()
        consumer.stop(graceful=True)
    finally:
        backend.close()
    return 0


def cmd_listener(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_app.backend import Backend
    from cloud_app.listener import run

    backend = Backend(cfg, role="listener")
    try:
        run(backend)
    finally:
        backend.close()
    return 0


def cmd_migrate(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_app.db import Database
    from cloud_app.fleet import sync_fleet

    db = Database(cfg.database_url)
    try:
        db.migrate()
        with db.session() as s:
            sync_fleet(s, cfg.fleet)
    finally:
        db.close()
    print("database at head; fleet synced")
    return 0


def cmd_create_user(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from cloud_app.db import Database
    from cloud_app.users import create_user

    password = os.environ.get("FAB_CLOUD_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
    db = Database(cfg.database_url)
    try:
        db.migrate()
        with db.session() as s:
            create_user(s, args.username, password, args.role)
    finally:
        db.close()
    print(f"user {args.username} ({args.role}) created")
    return 0


COMMANDS: dict[str, Any] = {"serve": cmd_serve, "worker": cmd_worker, "listener": cmd_listener,
                            "migrate": cmd_migrate, "create-user": cmd_create_user}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
    except FabError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check_config:
        print("config OK")
        return 0
    try:
        return int(COMMANDS[args.command or "serve"](cfg, args))
    except FabError as exc:  # boundary: a clear message, no traceback
        print(f"error: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
