"""The end-to-end scenario: ``python -m demo.scenario [--external]`` (``make scenario``).

Without --attach it starts its own factory (as ``python -m demo`` would, in a fresh
--workdir), runs the scenario, prints each step with its timing, and stops the
factory. With --attach WORKDIR it drives a factory already running from that work
folder (``python -m demo``), reading its URL, API token and bus login there.

The scenario uses the public interfaces only: the REST API with a bearer token, and
the bus as a cloud client (observing the detectors' status). Steps: see demo.steps.
Exit status 0 when every step passed, 1 with the reason when one failed, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from demo.cloud_api import ApiError, CloudApi, login_and_create_token
from demo.factory import Factory
from demo.observer import StatusWatch
from demo.options import add_arguments, from_args
from demo.steps import Report, Scenario, ScenarioFailed, ScenarioSettings
from fabbus.mqtt_config import MqttConfig


def run_scenario(factory: Factory, settings: ScenarioSettings | None = None, out: Any = print) -> Report:
    """Run the scenario against a started Factory."""
    assert factory.api is not None, "start the factory first"
    settings = settings or ScenarioSettings()
    settings.input_size = factory.options.image_size
    settings.pretrained = settings.pretrained or (str(factory.pretrained_path) if factory.pretrained_path else None)
    with StatusWatch(factory.mqtt_config()) as watch:
        return Scenario(factory.api, watch, settings, out).run()


def attach(workdir: Path, settings: ScenarioSettings) -> tuple[CloudApi, MqttConfig]:
    """The API and bus login of a factory running from ``workdir`` (its factory.json and secrets.json)."""
    info = json.loads((workdir / "factory.json").read_text(encoding="utf-8"))
    secrets = json.loads(Path(info["secrets"]).read_text(encoding="utf-8"))
    api = CloudApi(info["url"], secrets.get("api_token", ""))
    try:
        api.get("/me")
    except ApiError as exc:
        if exc.status != 401:
            raise
        api = CloudApi(info["url"], login_and_create_token(info["url"], info["admin_user"], secrets["admin_password"],
                                                           name="scenario"))
    m = info["mqtt"]
    settings.input_size = info["image_size"]
    settings.pretrained = settings.pretrained or info["pretrained"]["mobilenet_v2"]
    password = secrets["mqtt"][m["username"]]
    return api, MqttConfig(host=m["host"], port=m["port"], username=m["username"], password=password)


def _fresh(workdir: Path) -> None:
    """Empty a previous scenario's work folder (only one the factory made: it holds secrets.json)."""
    if workdir.exists() and (workdir / "secrets.json").exists():
        shutil.rmtree(workdir)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m demo.scenario", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, workdir="var/scenario", rate=20.0)
    g = p.add_argument_group("scenario")
    g.add_argument("--attach", type=Path, metavar="WORKDIR", help="drive the factory running from WORKDIR")
    g.add_argument("--keep", action="store_true", help="keep the work folder of a previous run (default: start fresh)")
    g.add_argument("--brand", default="brandB", help="the brand trained and deployed (%(default)s)")
    g.add_argument("--min-inspected", type=int, default=600, help="products per detector before training")
    g.add_argument("--epochs", type=int, default=3, help="epochs of the small CNN (%(default)s)")
    g.add_argument("--timeout", type=float, default=1200, help="the whole scenario's limit in seconds")
    return p.parse_args(argv)


def _timeout(signum: int, frame: object) -> None:
    raise ScenarioFailed("the scenario ran past its --timeout")


def _summary(report: Report, mode: str, started: float) -> str:
    rows = [f"  {t:7.1f} s  {name}" for name, t in report.timings]
    return "\n".join([f"scenario passed ({mode}) in {time.monotonic() - started:.0f} s:", *rows])


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ScenarioSettings(brand=args.brand, min_inspected=args.min_inspected, cnn_epochs=args.epochs)
    signal.signal(signal.SIGALRM, _timeout)
    signal.signal(signal.SIGTERM, _timeout)
    signal.alarm(int(args.timeout))
    started = time.monotonic()
    factory: Factory | None = None
    try:
        if args.attach:
            api, mqtt = attach(args.attach.resolve(), settings)
            mode = f"attached to {args.attach}"
            with StatusWatch(mqtt) as watch:
                report = Scenario(api, watch, settings).run()
        else:
            opts = from_args(args, prefer_default_ports=False)
            if not args.keep:
                _fresh(opts.workdir)
            factory = Factory(opts)
            mode = opts.mode
            print(f"starting a factory in {factory.workdir} ({mode})", flush=True)
            factory.start()
            print(f"factory up after {time.monotonic() - started:.1f} s: {factory.url}", flush=True)
            report = run_scenario(factory, settings)
        print(_summary(report, mode, started), flush=True)
        return 0
    except (ScenarioFailed, ApiError, TimeoutError, OSError, RuntimeError, ValueError, KeyError) as exc:
        print(f"scenario FAILED after {time.monotonic() - started:.0f} s: {exc}", file=sys.stderr, flush=True)
        if factory is not None:
            print(f"logs: {factory.workdir / 'logs'}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scenario interrupted", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        if factory is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            factory.stop()


if __name__ == "__main__":
    sys.exit(main())
