"""What a factory is made of: ``FactoryOptions``, and the command-line flags that fill them.

    opts = FactoryOptions(workdir=tmp)                 # embedded broker, SQLite, SQLite huey
    opts = FactoryOptions.external(workdir=tmp)        # Mosquitto (started here), Redis, a fresh PostgreSQL database

Flags shared by ``python -m demo`` and ``python -m demo.scenario`` (``add_arguments``):
``--external`` is the short form of ``--broker mosquitto --redis-url redis://127.0.0.1:6379/0
--database-url fresh``; each can also be given alone.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from broker.harness import port_free

BrokerKind = Literal["embedded", "mosquitto", "url"]
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_PG_ADMIN = os.environ.get("FAB_DEMO_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
FRESH = "fresh"
_handed: set[int] = set()


def listen_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, for a server of the factory.

    Not from the ephemeral range (binding port 0 gives one there): the kernel hands those
    to outgoing connections, which would take a server's port between choosing and binding it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(min(10000, low // 2), low)
        if port not in _handed and port_free(host, port):
            _handed.add(port)
            return port
    raise OSError("no free port below the ephemeral range")


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://[user:password@]host[:port]")
        return cls(parts.hostname, parts.port or 1883, unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


@dataclass(frozen=True)
class FactoryOptions:
    """Everything that can vary between two factories. 0 for a port: any free port."""

    workdir: Path = Path("var/demo")
    site: str = "plant1"
    lines: int = 2
    detectors_per_line: int = 2
    broker: BrokerKind = "embedded"
    broker_url: str | None = None            # broker == "url": mqtt://[cloud-user:password@]host:port
    broker_port: int = 0
    database_url: str | None = None          # None: SQLite in the work folder; "fresh": a new PostgreSQL database
    pg_admin_url: str = DEFAULT_PG_ADMIN     # where "fresh" databases are created (and dropped at stop)
    redis_url: str | None = None             # None: SQLite-backed huey in the work folder
    web_host: str = "127.0.0.1"
    web_port: int = 0
    rate_hz: float = 20.0                    # simulated products per second per detector
    image_size: int = 32                     # detector frames; a deployed model's input must match
    defect_rate: float = 0.5
    keepalive: int = 30                      # MQTT keep-alive of edges and detectors (offline after 1.5x)
    pretrained: bool = True                  # write the local MobileNetV2 weights file the scenario fine-tunes from
    log_level: str = "INFO"
    ready_timeout_s: float = 240.0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def external(cls, **kw: object) -> FactoryOptions:
        """Mosquitto started by the factory, Redis on 127.0.0.1:6379, a fresh PostgreSQL database."""
        base = {"broker": "mosquitto", "redis_url": DEFAULT_REDIS, "database_url": FRESH}
        return cls(**{**base, **kw})  # type: ignore[arg-type]

    def with_(self, **kw: object) -> FactoryOptions:
        return replace(self, **kw)  # type: ignore[arg-type]

    @property
    def mode(self) -> str:
        database = "postgresql" if self.database_url else "sqlite"
        return "+".join([self.broker, database, "redis" if self.redis_url else "sqlite-huey"])


def add_arguments(p: argparse.ArgumentParser, *, workdir: str = "var/demo", rate: float = 10.0) -> None:
    g = p.add_argument_group("factory")
    g.add_argument("--workdir", type=Path, default=Path(workdir),
                   help="configs, credentials (mode 0600), state and logs (default: %(default)s)")
    g.add_argument("--external", action="store_true",
                   help=f"Mosquitto started here on a free port, Redis at {DEFAULT_REDIS}, a fresh PostgreSQL "
                   f"database on {DEFAULT_PG_ADMIN.rsplit('@', 1)[-1]} (dropped at exit)")
    g.add_argument("--broker", choices=["embedded", "mosquitto"], help="broker started by the factory (embedded)")
    g.add_argument("--broker-url", help="use a running broker: mqtt://[cloud-user:password@]host:port "
                   "(it must accept the users and ACL the factory writes to WORKDIR/broker/)")
    g.add_argument("--broker-port", type=int, default=None, help="port of the broker started here (1884 if free)")
    g.add_argument("--database-url", help="postgresql+psycopg://user:pass@host/db, or 'fresh' for a new database on "
                   "$FAB_DEMO_PG_ADMIN (dropped at exit); default SQLite in the work folder")
    g.add_argument("--redis-url", help="redis://host:port/db for huey (a unique queue name); default SQLite huey")
    g.add_argument("--web-port", type=int, default=None, help="dashboard port (8080 if free)")
    g.add_argument("--web-host", default="127.0.0.1", help="dashboard address (%(default)s)")
    g.add_argument("--rate", type=float, default=rate, help="simulated products per second per detector (%(default)s)")
    g.add_argument("--image-size", type=int, default=32, help="detector frame size in pixels (%(default)s)")
    g.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="level of the processes' log files (%(default)s)")


def _preferred(port: int | None, default: int, prefer: bool) -> int:
    if port is not None:
        return port
    return default if prefer and port_free("127.0.0.1", default) else listen_port()


def from_args(args: argparse.Namespace, *, prefer_default_ports: bool = True) -> FactoryOptions:
    opts = FactoryOptions.external() if args.external else FactoryOptions()
    if args.broker_url:
        BrokerUrl.parse(args.broker_url)
        opts = opts.with_(broker="url", broker_url=args.broker_url)
    elif args.broker:
        opts = opts.with_(broker=args.broker)
    if args.database_url:
        opts = opts.with_(database_url=args.database_url)
    if args.redis_url:
        opts = opts.with_(redis_url=args.redis_url)
    return opts.with_(workdir=args.workdir, web_host=args.web_host, rate_hz=args.rate, image_size=args.image_size,
                      log_level=args.log_level,
                      broker_port=_preferred(args.broker_port, 1884, prefer_default_ports and opts.broker != "url"),
                      web_port=_preferred(args.web_port, 8080, prefer_default_ports))
