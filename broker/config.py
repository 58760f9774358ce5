"""Configuration of the embedded broker (config/broker.yaml)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fabbus.config_file import load_config_file


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Cfg):
    certfile: Path
    keyfile: Path
    cafile: Path | None = None
    require_client_cert: bool = False


class ListenerConfig(_Cfg):
    host: str = "127.0.0.1"
    port: int = Field(default=1884, ge=0, le=65535)
    tls: TlsConfig | None = None


class BrokerConfig(_Cfg):
    """The embedded broker's settings. Relative paths are taken from the config file's folder."""

    listener: ListenerConfig = ListenerConfig()
    password_file: Path | None = Field(default=None, description="Mosquitto-format password file; required unless allow_anonymous")
    acl_file: Path | None = Field(default=None, description="Mosquitto-format ACL file (fab-contract acl generates one)")
    allow_anonymous: bool = False
    persistence_file: Path | None = Field(default=Path("var/broker/state.db"), description="SQLite file for retained messages and sessions; null keeps them in memory")
    keepalive_factor: float = Field(default=1.5, ge=1.0, le=10.0, description="a client silent for factor x keep-alive is dropped")
    max_packet_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_queued_messages: int = Field(default=10_000, ge=1, description="per offline persistent session")
    max_inflight_messages: int = Field(default=20, ge=1, le=65535, description="unacknowledged QoS 1/2 messages per client (Mosquitto's default)")
    auth_workers: int = Field(default=4, ge=1, le=64, description="threads verifying passwords off the event loop")

    @model_validator(mode="after")
    def _auth(self) -> BrokerConfig:
        if not self.allow_anonymous and self.password_file is None:
            raise ValueError("password_file is required unless allow_anonymous is true")
        return self

    def resolve(self, base: Path) -> BrokerConfig:
        """Paths made absolute against ``base`` (the config file's folder)."""

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else (base / p)

        data = self.model_copy(deep=True)
        data.password_file = fix(self.password_file)
        data.acl_file = fix(self.acl_file)
        data.persistence_file = fix(self.persistence_file)
        if data.listener.tls:
            t = data.listener.tls
            t.certfile, t.keyfile, t.cafile = fix(t.certfile), fix(t.keyfile), fix(t.cafile)
        return data


def load_config(path: str | Path) -> BrokerConfig:
    p = Path(path)
    return load_config_file(p, BrokerConfig)
