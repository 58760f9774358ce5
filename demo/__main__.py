"""Run the whole simulated factory: ``python -m demo`` (``make demo``).

It starts, as separate processes: the broker, the cloud app (web, huey worker, bus
listener), and two lines ("plant1/line1", "plant1/line2"), each with an edge server
and two detectors ("cam1", "cam2") inspecting simulated products and building up
their image history. It prints the dashboard URL and a login, and runs until Ctrl-C
(or SIGTERM, or --duration), then stops every process it started.

Embedded defaults: the embedded broker (port 1884 if free), SQLite, SQLite-backed huey.
--external: Mosquitto started here on a free port, Redis and a fresh PostgreSQL database
(dropped at exit) on this machine; or name each service with --broker-url,
--redis-url and --database-url. Logs, configs and credentials are in --workdir.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from demo.factory import Factory
from demo.options import add_arguments, from_args


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: until Ctrl-C)")
    p.add_argument("--prepare", action="store_true",
                   help="write the configs, credentials and broker files into --workdir, start nothing")
    p.add_argument("--verbose", action="store_true", help="log the factory's own steps")
    return p.parse_args(argv)


def _banner(f: Factory) -> str:
    info = f.info()
    lines = [
        "",
        f"  dashboard   {f.url}",
        f"  login       {f.admin_user} / {f.admin_password}",
        f"  API token   in {info['secrets']} (api_token); send it as 'Authorization: Bearer <token>'",
        f"  broker      mqtt://{info['mqtt']['host']}:{info['mqtt']['port']}  ({f.options.mode})",
        "  lines       " + ", ".join(f"{f.plant.site}/{ln} ({', '.join(d)})" for ln, d in info["lines"].items()),
        f"  logs        {info['logs']}/<process>.log",
        "",
        "  Train a model on a line's history from the dashboard (Train), watch it, then deploy it (Deploy).",
        "  Scripted: python -m demo.scenario --attach " + str(f.workdir) + "   Ctrl-C stops the factory.",
        "",
    ]
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: wherever the main thread is, it goes on to stop the factory


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):   # SIGINT too: a shell may start us with it ignored
        signal.signal(sig, _interrupt)
    try:
        opts = from_args(args)
    except ValueError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    factory = Factory(opts)
    if args.prepare:
        factory.prepare()
        print(f"written: {factory.workdir}/config/*.yaml, {factory.workdir}/secrets.json (mode 0600), "
              f"{factory.workdir}/broker/passwd and acl")
        return 0
    print(f"starting the factory in {factory.workdir} ({opts.mode}); this takes a minute...", flush=True)
    t0 = time.monotonic()
    try:
        factory.start()
        print(f"the factory is up after {time.monotonic() - t0:.0f} s", flush=True)
        print(_banner(factory), flush=True)
        stop.wait(args.duration or None)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 (boundary: the CLI)
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):   # a second Ctrl-C must not leave orphans behind
            signal.signal(sig, signal.SIG_IGN)
        factory.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
