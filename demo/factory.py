"""The whole simulated factory as separate processes: broker, cloud (web, worker, listener), edges, detectors.

    with Factory(FactoryOptions(workdir=tmp)) as f:          # start(): everything up and ready
        f.url, f.admin_user, f.admin_password, f.api         # the dashboard, its login, a CloudApi (bearer token)
        f.names                                              # ["broker", "web", "worker", "listener",
                                                             #  "edge-line1", "detector-line1-cam1", ...]
        f.kill("edge-line1")                                 # SIGKILL (a crash)
        f.start_process("edge-line1")                        # start it again and wait until it is ready
        f.restart("broker")                                  # SIGTERM, start, ready; restart(name, kill=True): SIGKILL
        f.stop_process("worker"); f.process("worker").log_path
        f.wait_nodes_online(after=t)                         # every edge and detector reborn since time.time() t
    # stop(): every process stopped in order (nodes, cloud, broker); a fresh database is dropped

Ready means: the broker's port accepts connections; the web app answers its login
page; the worker and the listener logged that they run; each edge and detector is
online in the cloud's fleet (GET /api/v1/fleet) with a birth newer than its start,
and each detector's history server accepts connections. Every process reads its
config from WORKDIR/config and its secrets from the environment the factory gives
it (the passwords and tokens in WORKDIR/secrets.json, mode 0600), and writes its log
to WORKDIR/logs/<name>.log.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker.harness import BrokerProcess
from demo.cloud_api import CloudApi, login_and_create_token
from demo.configs import ConfigPaths, Endpoints, write_configs
from demo.external import FreshDatabase, check_redis, clear_queue
from demo.fleet import ADMIN_USER, CLOUD_USER, Plant, Secrets
from demo.launch import Launch, http_ok, not_online, port_open, write_broker_files
from demo.options import FRESH, BrokerUrl, FactoryOptions, listen_port
from demo.pretrained import pretrained_command, weights_name
from demo.procs import BrokerChild, Child, ProcessError
from fabbus.mqtt_config import MqttConfig

log = logging.getLogger(__name__)

CLOUD_NAMES = ("web", "worker", "listener")


class Factory:
    def __init__(self, options: FactoryOptions | None = None, **overrides: Any) -> None:
        self.options = (options or FactoryOptions()).with_(**overrides)
        self.workdir = Path(self.options.workdir).resolve()
        self.plant = Plant(self.options.site, self.options.lines, self.options.detectors_per_line)
        self.children: dict[str, Child] = {}
        self.api: CloudApi | None = None
        self.url = ""
        self.secrets: Secrets | None = None
        self.database: FreshDatabase | None = None
        self.pretrained_path: Path | None = None
        self._endpoints: Endpoints | None = None
        self._paths: ConfigPaths | None = None
        self._launch: Launch | None = None
        self._jobs: list[Child] = []   # one-shot processes that may still run when start() fails
        self._broker_url = BrokerUrl.parse(self.options.broker_url) if self.options.broker == "url" else None

    # ---- public view

    @property
    def names(self) -> list[str]:
        return list(self.children)

    def process(self, name: str) -> Child:
        try:
            return self.children[name]
        except KeyError:
            raise KeyError(f"no process {name!r}; the factory has {self.names}") from None

    @property
    def admin_user(self) -> str:
        return ADMIN_USER

    @property
    def admin_password(self) -> str:
        assert self.secrets is not None, "start() first"
        return self.secrets.admin_password

    @property
    def database_name(self) -> str | None:
        """The fresh PostgreSQL database made for this factory (dropped at stop), else None."""
        return self.database.name if self.database else None

    @property
    def queue_name(self) -> str:
        assert self._endpoints is not None, "start() first"
        return self._endpoints.huey_name

    def mqtt_config(self, **kw: Any) -> MqttConfig:
        """Settings of a cloud-role bus client (the cloud user) for observing the factory."""
        assert self._endpoints is not None and self.secrets is not None, "start() first"
        return MqttConfig(host=self._endpoints.mqtt_host, port=self._endpoints.mqtt_port, username=CLOUD_USER,
                          password=self.secrets.mqtt[CLOUD_USER], **kw)

    def info(self) -> dict[str, Any]:
        """What a client of the running factory needs, without secrets (also in WORKDIR/factory.json)."""
        ep = self._endpoints
        assert ep is not None, "start() first"
        return {"url": self.url, "admin_user": ADMIN_USER, "mode": self.options.mode, "site": self.plant.site,
                "lines": {line: self.plant.detectors(line) for line in self.plant.lines},
                "mqtt": {"host": ep.mqtt_host, "port": ep.mqtt_port, "username": CLOUD_USER},
                "image_size": self.options.image_size,
                "pretrained": {"mobilenet_v2": str(self.pretrained_path) if self.pretrained_path else None},
                "secrets": str(self.workdir / "secrets.json"), "logs": str(self.workdir / "logs"),
                "processes": {n: c.pid for n, c in self.children.items()}}

    # ---- lifecycle

    def start(self) -> Factory:
        try:
            self._prepare()
            if "broker" in self.children:
                self.children["broker"].start()
            self._setup_database()
            self._start_group(list(CLOUD_NAMES))
            self._login()
            pretrained = self._pretrained_job()
            self._start_group([n for n in self.children if n.startswith(("detector-", "edge-"))])
            if pretrained is not None:
                self._finish(pretrained, timeout=self.options.ready_timeout_s)
            self._write_info()
        except BaseException:
            self.stop()
            raise
        log.info("factory ready: %s", self.url)
        return self

    def stop(self) -> None:
        """Stop every process (nodes first, then the cloud, then the broker); drop a fresh database."""
        nodes = [c for n, c in self.children.items() if n.startswith(("edge-", "detector-"))]
        cloud = [self.children[n] for n in CLOUD_NAMES if n in self.children]
        for group in (nodes, cloud, [self.children["broker"]] if "broker" in self.children else []):
            for child in group:
                if child.running:
                    child.signal_stop()
            for child in group:
                child.stop()
        for job in self._jobs:
            job.stop()
        self._cleanup_external()

    def __enter__(self) -> Factory:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- one process (for fault injection)

    def kill(self, name: str) -> None:
        """SIGKILL the process and reap it: nothing is saved, its last will fires on the broker."""
        self.process(name).kill()

    def stop_process(self, name: str) -> None:
        """SIGTERM the process and wait for its clean exit."""
        self.process(name).stop()

    def start_process(self, name: str, *, wait: bool = True) -> None:
        """Start the (stopped or killed) process again with the same config and ports; wait until ready."""
        child = self.process(name).start()
        if wait:
            child.wait_ready(self._readiness(name), self.options.ready_timeout_s)

    def restart(self, name: str, *, kill: bool = False, wait: bool = True) -> None:
        """Stop (SIGTERM, or SIGKILL with ``kill=True``) and start again; wait until ready."""
        if kill:
            self.kill(name)
        else:
            self.stop_process(name)
        self.start_process(name, wait=wait)

    def wait_nodes_online(self, after: float = 0.0, timeout: float | None = None) -> None:
        """Wait until the fleet shows every edge and detector online with a birth newer than ``after``
        (a ``time.time()``; e.g. taken before a broker restart: every node has reconnected)."""
        assert self.api is not None, "start() first"
        keys = self.plant.node_usernames()
        deadline = time.monotonic() + (timeout or self.options.ready_timeout_s)
        while late := not_online(self.api, keys, after):
            if time.monotonic() > deadline:
                raise ProcessError(f"nodes not online (with a birth after {after:.1f}): {late}")
            time.sleep(0.3)

    # ---- preparation

    def prepare(self) -> Factory:
        """Write the configs, the credentials and the broker's files, and start nothing."""
        self._prepare(services=False)
        return self

    def _prepare(self, services: bool = True) -> None:
        opts, work = self.options, self.workdir
        (work / "logs").mkdir(parents=True, exist_ok=True)
        cloud_pw = self._broker_url.password if self._broker_url else None
        self.secrets = Secrets.load(work / "secrets.json", self.plant, cloud_password=cloud_pw)
        suffix = uuid.uuid4().hex[:10]
        huey = f"fabdemo{suffix}" if opts.redis_url else "fab-cloud"  # letters and digits: huey strips the rest
        if self._broker_url or not services:  # a broker the factory does not run gets the same files
            write_broker_files(work / "broker", self.secrets.mqtt)
            url = self._broker_url or BrokerUrl("127.0.0.1", opts.broker_port or 1884)
            host, port = url.host, url.port
        else:
            broker = BrokerProcess(opts.broker, work / "broker", self.secrets.mqtt, [CLOUD_USER],
                                   port=opts.broker_port or listen_port())
            self.children["broker"] = BrokerChild(broker)
            host, port = broker.host, broker.port
        ep = Endpoints(host, port, opts.web_port or listen_port(), huey_name=huey)
        for line in self.plant.lines:
            for det in self.plant.detectors(line):
                ep.history_ports[(line, det)] = listen_port()
        self._endpoints = ep
        if opts.redis_url and services:
            check_redis(opts.redis_url)
        if opts.database_url == FRESH and services:
            self.database = FreshDatabase.create(opts.pg_admin_url, f"fabdemo_{suffix}")
        self._paths = write_configs(opts, self.plant, ep, work)
        self.url = f"http://{'127.0.0.1' if opts.web_host in ('0.0.0.0', '') else opts.web_host}:{ep.web_port}"
        database_url = self.database.url if self.database else opts.database_url
        self._launch = Launch(opts, self.plant, self.secrets, self._paths, ep, work / "logs", database_url)
        self.children.update(self._launch.children())

    # ---- start steps

    def _finish(self, child: Child, timeout: float) -> None:
        rc = child.wait(timeout)
        child.stop()
        if rc != 0:
            raise ProcessError(f"{child.name} exited with code {rc}; its log {child.log_path} ends with:\n"
                               f"{child.log_tail()}")

    def _setup_database(self) -> None:
        assert self._launch is not None and self.secrets is not None
        la = self._launch
        self._finish(la.one_shot("migrate", la.cloud_command("migrate"), la.cloud_env()).start(), 120)
        child = la.one_shot("create-user", la.cloud_command("create-user", ADMIN_USER, "--role", "admin"),
                            la.cloud_env(FAB_CLOUD_PASSWORD=self.secrets.admin_password)).start()
        rc = child.wait(120)
        child.stop()
        if rc != 0 and f"user {ADMIN_USER!r} exists" not in child.log_tail(3):  # a reused SQLite database
            raise ProcessError(f"create-user exited with code {rc}:\n{child.log_tail()}")

    def _start_group(self, names: list[str]) -> None:
        for name in names:
            self.children[name].start()
        for name in names:
            self.children[name].wait_ready(self._readiness(name), self.options.ready_timeout_s)
            log.info("%s ready", name)

    def _login(self) -> None:
        assert self.secrets is not None
        token = login_and_create_token(self.url, ADMIN_USER, self.secrets.admin_password, name="demo-factory")
        self.secrets.api_token = token
        self.secrets.save()
        self.api = CloudApi(self.url, token)

    def _pretrained_job(self) -> Child | None:
        if not self.options.pretrained:
            return None
        self.pretrained_path = self.workdir / "pretrained" / weights_name(0.35, self.options.image_size)
        if self.pretrained_path.is_file():
            return None
        assert self._launch is not None
        argv = pretrained_command(self.pretrained_path, 0.35, self.options.image_size)
        job = self._launch.one_shot("pretrained", argv, self._launch.env())
        self._jobs.append(job)
        return job.start()

    def _write_info(self) -> None:
        path = self.workdir / "factory.json"
        path.write_text(json.dumps(self.info(), indent=2), encoding="utf-8")

    def _cleanup_external(self) -> None:
        opts, ep = self.options, self._endpoints
        if opts.redis_url and ep is not None:
            try:
                clear_queue(opts.redis_url, ep.huey_name)
            except Exception as exc:  # noqa: BLE001 (boundary: cleanup must not hide the run's own outcome)
                log.warning("could not clear the huey queue %s: %s", ep.huey_name, exc)
        if self.database is not None:
            try:
                self.database.drop()
            except Exception as exc:  # noqa: BLE001 (boundary, as above)
                log.warning("could not drop the database %s: %s", self.database.name, exc)
            self.database = None

    # ---- readiness

    def _readiness(self, name: str) -> Callable[[], bool]:
        child = self.process(name)
        if name == "web":
            return lambda: http_ok(f"{self.url}/login")
        if name == "worker":
            return lambda: "worker running" in child.log_since_start()
        if name == "listener":
            return lambda: "listener connected as" in child.log_since_start()
        if name.startswith(("edge-", "detector-")):
            return lambda: self._node_ready(name, child)
        return lambda: True

    def _node_ready(self, name: str, child: Child) -> bool:
        _, line, *det = name.split("-", 2)
        key = self.plant.detector_user(line, det[0]) if det else self.plant.edge_user(line)
        if det and self._endpoints and not port_open(self._endpoints.history_ports[(line, det[0])]):
            return False
        assert self.api is not None
        return not not_online(self.api, [key], child.started_at - 2)

