"""The edge's one config model (config/edge.yaml); secrets come from the environment.

Relative paths are taken from the config file's folder. Each detector's history
token is read from the environment variable its ``token_env`` names (a ``token``
field is accepted for tests that hold it in memory), the MQTT password from
``mqtt.password_env`` (fabbus.mqtt_config). Importing this module never imports
TensorFlow: ``python -m edge_node --check-config`` stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from fabbus.chunks import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from fabbus.config_file import load_config_file
from fabbus.mqtt_config import MqttConfig

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]
DEFAULT_TOKEN_ENV = "FAB_HISTORY_TOKEN"


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EdgeIds(_Cfg):
    site: Id
    line: Id


class DetectorLink(_Cfg):
    """How the edge reaches one detector's history server on the plant network."""

    url: str = Field(description="http://host:port of the detector's history server")
    token: SecretStr | None = Field(default=None, description="default: the variable named by token_env")
    token_env: str = Field(default=DEFAULT_TOKEN_ENV, min_length=1,
                           description="environment variable holding the edge's bearer token for this detector")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must name the server only (no path, query or fragment)")
        try:
            parts.port  # noqa: B018 (validates the port)
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from None
        return value.rstrip("/")

    def resolved_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        return os.environ.get(self.token_env) or None


class BrandSection(_Cfg):
    classes: list[Id] = Field(min_length=2, description="classes the line's detectors label; the OK class first")

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[str]) -> list[str]:
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be unique")
        return classes


class LimitsConfig(_Cfg):
    max_concurrent_tasks: Literal[1] = Field(default=1, description="tasks run one at a time")
    queue_size: int = Field(default=4, ge=0, le=1000, description="accepted tasks waiting beside the running one")


class CollectionConfig(_Cfg):
    page_size: int = Field(default=500, ge=1, le=1000, description="samples listed per history request")
    timeout_s: float = Field(default=10.0, gt=0, description="HTTP timeout per request to a detector")
    retries: int = Field(default=2, ge=0, le=10, description="downloads retried after a corrupt or failed one")
    continue_on_error: bool = Field(default=False, description="a detector that fails: go on with the others")


class TransferSection(_Cfg):
    chunk_size: int = Field(default=DEFAULT_CHUNK_SIZE, ge=MIN_CHUNK_SIZE, le=MAX_CHUNK_SIZE)
    upload_timeout_s: float = Field(default=300.0, gt=0, description="wait this long for the cloud's TransferResult")
    fetch_timeout_s: float = Field(default=300.0, gt=0, description="fetching a model from the cloud")
    delivery_timeout_s: float = Field(default=120.0, gt=0, description="per detector, until ACTIVE")
    quiet_s: float = Field(default=3.0, gt=0, description="fetch: no chunk for this long, ask again")
    max_retries: int = Field(default=5, ge=1)


class EdgeConfig(_Cfg):
    """Everything one line's edge server needs; see config/edge.yaml for a commented example."""

    ids: EdgeIds
    mqtt: MqttConfig = MqttConfig()
    detectors: dict[Id, DetectorLink] = Field(min_length=1, description="the line's detectors")
    brands: dict[Id, BrandSection] = Field(min_length=1)
    workdir: Path = Field(default=Path("var/edge"), description="dataset cache, task folders, models")
    limits: LimitsConfig = LimitsConfig()
    collection: CollectionConfig = CollectionConfig()
    transfer: TransferSection = TransferSection()
    progress_interval_s: float = Field(default=0.5, gt=0, le=60, description="at most one progress message per period")

    @model_validator(mode="after")
    def _mqtt_user(self) -> EdgeConfig:
        expected = f"{self.ids.site}/{self.ids.line}"
        if self.mqtt.username not in (None, expected):
            raise ValueError(f"mqtt.username must be empty or {expected!r} (the edge's scope), "
                             f"not {self.mqtt.username!r}")
        return self

    def resolve(self, base: Path) -> EdgeConfig:
        """Paths made absolute against ``base`` (the config file's folder)."""
        return self.model_copy(update={"workdir": base / self.workdir})

    def secret_problems(self) -> list[str]:
        """Secrets that must be in the environment and are not."""
        problems = []
        if self.mqtt.resolved_password() is None:
            problems.append(f"mqtt.password_env: environment variable {self.mqtt.password_env} is not set")
        for det, link in self.detectors.items():
            if link.resolved_token() is None:
                problems.append(f"detectors.{det}.token_env: environment variable {link.token_env} is not set")
        return problems


def load_config(path: str | Path) -> EdgeConfig:
    p = Path(path)
    return load_config_file(p, EdgeConfig)
