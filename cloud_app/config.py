"""The cloud app's one config model (config/cloud.yaml); secrets come from the environment.

Secrets never sit in the YAML file:
  FAB_CLOUD_DATABASE_URL  database URL (overrides ``database_url``; a PostgreSQL URL carries a password)
  FAB_CLOUD_REDIS_URL     huey's Redis URL (overrides ``huey.url``)
  FAB_CLOUD_SECRET_KEY    the web session key (``web.secret_key_env``)
  FAB_MQTT_PASSWORD       the cloud's broker password (``mqtt.password_env``)

Relative paths (``model_store``, ``huey.sqlite_path``, a relative SQLite database) are
taken from the config file's folder. The fleet is declared here (sites, lines,
detectors, brands with their classes) and synced into the database at start; with
``fleet.discover`` on, nodes the config does not list are added when their birth
message arrives (their line becomes known too), so a plant can also be run on
discovery alone. Brands are never discovered: a model's classes are checked against them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fabbus.config_file import load_config_file
from fabbus.mqtt_config import MqttConfig

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
DATABASE_URL_ENV = "FAB_CLOUD_DATABASE_URL"
REDIS_URL_ENV = "FAB_CLOUD_REDIS_URL"


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HueyConfig(_Cfg):
    name: str = Field(default="fab-cloud", min_length=1, description="queue name (Redis key prefix)")
    url: str | None = Field(default=None, description=f"redis://... for RedisHuey; ${REDIS_URL_ENV} overrides; "
                                                      "none: SqliteHuey on sqlite_path")
    sqlite_path: Path = Path("var/cloud/huey.db")
    workers: int = Field(default=4, ge=1, le=64, description="consumer worker threads")

    @field_validator("url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class GateConfig(_Cfg):
    """The evaluation gate: a version failing any check is rejected, with every failed check as a reason."""

    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1,
                                     description="accuracy may fall this much below the deployed model's")
    min_accuracy: float = Field(default=0.0, ge=0, le=1)
    min_recall: float = Field(default=0.5, ge=0, le=1, description="floor for the recall of every defect class")
    min_recall_per_class: dict[str, float] = Field(default_factory=dict, description="per-class floors")
    max_latency_ms: float = Field(default=50.0, gt=0, description="p50 inference latency on the cloud machine")
    latency_runs: int = Field(default=20, ge=1, le=10_000)
    require_metrics: bool = Field(default=True, description="reject a model whose manifest lacks test metrics")


class DispatchConfig(_Cfg):
    ack_timeout_s: float = Field(default=10.0, gt=0, description="wait this long for ACCEPTED/REJECTED")
    ack_retries: int = Field(default=2, ge=0, description="publish again this many times before TIMED_OUT")
    silence_timeout_s: float = Field(default=300.0, gt=0, description="a running task silent this long: INTERRUPTED")
    follow_interval_s: float = Field(default=5.0, gt=0, description="period of the task follower")
    redispatch_after_s: float = Field(default=30.0, gt=0,
                                      description="a QUEUED task nobody dispatched this long is enqueued again")
    poll_interval_s: float = Field(default=0.1, gt=0, description="how often a dispatch looks for the ack")


class TransferSettings(_Cfg):
    quiet_s: float = Field(default=3.0, gt=0, description="upload silent this long: ask again for missing chunks")
    max_retries: int = Field(default=5, ge=1)
    max_model_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    chunk_size: int = Field(default=256 * 1024, ge=1024, description="chunk size of models served to edges")
    serve_s: float = Field(default=120.0, gt=0, description="answer an edge's chunk requests this long per fetch")


class LineSpec(_Cfg):
    title: str = ""
    detectors: list[Id] = Field(default_factory=list)


class SiteSpec(_Cfg):
    title: str = ""
    lines: dict[Id, LineSpec] = Field(default_factory=dict)


class BrandSpec(_Cfg):
    classes: list[str] = Field(min_length=2, description="class names; the OK class first unless ok_class says")
    ok_class: str | None = None

    @model_validator(mode="after")
    def _ok(self) -> BrandSpec:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        if self.ok_class is not None and self.ok_class not in self.classes:
            raise ValueError(f"ok_class {self.ok_class!r} is not one of the classes {self.classes}")
        return self

    @property
    def ok(self) -> str:
        return self.ok_class or self.classes[0]


class FleetConfig(_Cfg):
    sites: dict[Id, SiteSpec] = Field(default_factory=dict)
    brands: dict[Id, BrandSpec] = Field(default_factory=dict)
    discover: bool = Field(default=True, description="add nodes seen on the bus that are not listed here")


class WebConfig(_Cfg):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    secret_key_env: str = "FAB_CLOUD_SECRET_KEY"
    event_poll_s: float = Field(default=0.25, gt=0, description="how often the event stream polls for changes")
    options: dict[str, Any] = Field(default_factory=dict, description="the web layer's own settings")


class CloudConfig(_Cfg):
    """Everything the cloud processes (web, worker, listener) need; see config/cloud.yaml."""

    node: Id = Field(default="cloud", description="prefix of this installation's cloud node ids on the bus")
    database_url: str = Field(default="sqlite:///var/cloud/cloud.db",
                              description=f"SQLAlchemy URL; ${DATABASE_URL_ENV} overrides")
    huey: HueyConfig = HueyConfig()
    mqtt: MqttConfig = MqttConfig(username="cloud")
    model_store: Path = Field(default=Path("var/cloud/models"), description="content-addressed model files")
    gate: GateConfig = GateConfig()
    dispatch: DispatchConfig = DispatchConfig()
    transfer: TransferSettings = TransferSettings()
    fleet: FleetConfig = FleetConfig()
    web: WebConfig = WebConfig()
    max_progress_points: int = Field(default=2000, ge=10, description="per-batch chart points kept per task")
    change_retention_s: float = Field(default=3600.0, gt=0, description="age after which the change feed is pruned")

    @field_validator("database_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must be a sqlite:// or postgresql+psycopg:// URL")
        return value

    def resolve(self, base: Path) -> CloudConfig:
        """Secrets from the environment, relative paths made absolute against ``base``."""
        data = self.model_copy(deep=True)
        data.database_url = _sqlite_abs(os.environ.get(DATABASE_URL_ENV) or self.database_url, base)
        data.huey.url = os.environ.get(REDIS_URL_ENV) or self.huey.url
        data.huey.sqlite_path = base / self.huey.sqlite_path
        data.model_store = base / self.model_store
        return data


def _sqlite_abs(url: str, base: Path) -> str:
    """sqlite:///relative/path -> sqlite:////abs/path (sqlite://// and :memory: stay)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/") or ":memory:" in url or url == prefix:
        return url
    path, sep, query = url[len(prefix):].partition("?")
    return f"{prefix}{(base / path).resolve()}{sep}{query}"


def load_config(path: str | Path | None = None) -> CloudConfig:
    """Read and check a config file (default: $FAB_CLOUD_CONFIG or config/cloud.yaml); ConfigError per bad key."""
    p = Path(path or os.environ.get("FAB_CLOUD_CONFIG") or Path(__file__).resolve().parents[1] / "config/cloud.yaml")
    return load_config_file(p, CloudConfig)
