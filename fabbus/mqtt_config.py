"""Connection settings of a bus client (one ``mqtt:`` section in every process's config).

The password never sits in a YAML file: by default it is read from the environment
variable named by ``password_env`` (``FAB_MQTT_PASSWORD``); a ``password`` field
is accepted for tests and tools that hold it in memory.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from fabbus.errors import ConfigError
from fabbus.messages import MAX_PAYLOAD_BYTES

DEFAULT_PASSWORD_ENV = "FAB_MQTT_PASSWORD"


class TlsConfig(BaseModel):
    """TLS towards the broker. Without ``ca_file`` the system's trusted CAs are used."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = None
    cert_file: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    key_file: Path | None = Field(default=None, description="key of the client certificate")
    insecure: bool = Field(default=False, description="accept any server certificate and host name; tests only")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self

    def context(self) -> ssl.SSLContext:
        """The client-side SSL context these settings describe."""
        try:
            ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file and self.key_file:
                ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(str(f) for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise ConfigError(f"mqtt.tls: cannot load {files or 'the system CAs'}: {exc}") from None
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.sslsocket_class = _ClosingSSLSocket
        return ctx


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails: paho 2.2 leaves such a socket open on every retry."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class MqttConfig(BaseModel):
    """How a process reaches the broker.

    ``username`` may stay empty for scoped roles (edge, detector): the client then
    uses the node's scope (``fabbus.acl.username_for``), as the broker ACL expects.
    ``client_id`` defaults to a stable id derived from the role and node, so that a
    restarted process takes over its own session (required for ``clean_session: false``).
    """

    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1884, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = Field(default=None, description=f"default: ${DEFAULT_PASSWORD_ENV}")
    password_env: str = DEFAULT_PASSWORD_ENV
    client_id: str | None = Field(default=None, min_length=1, max_length=128)
    keepalive: int = Field(default=30, ge=2, le=65535)
    clean_session: bool = True
    tls: TlsConfig | None = None
    reconnect_min_delay: float = Field(default=0.5, gt=0, le=3600)
    reconnect_max_delay: float = Field(default=30.0, gt=0, le=3600)
    connect_timeout: float = Field(default=10.0, gt=0, description="how long connect() waits for a CONNACK")
    close_timeout: float = Field(default=2.0, ge=0, description="how long close() waits for the offline state's ack")
    max_payload_bytes: int = Field(default=MAX_PAYLOAD_BYTES, ge=1024)
    dispatch: Literal["thread", "inline"] = Field(
        default="thread",
        description="run handlers on one worker thread (default) or on paho's network thread; an inline "
                    "handler must never block, nor wait() for a delivery (the network thread would wait on itself)")
    dedup_window: int = Field(default=10_000, ge=1, description="how many recent message ids are remembered")

    @model_validator(mode="after")
    def _delays(self) -> MqttConfig:
        if self.reconnect_min_delay > self.reconnect_max_delay:
            raise ValueError("reconnect_min_delay must not exceed reconnect_max_delay")
        return self

    def paho_client(self, client_id: str, username: str | None, tls: ssl.SSLContext | None) -> mqtt.Client:
        """A paho client (callback API 2, MQTT 3.1.1, manual acks) with these settings; not connected."""
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=self.clean_session,
                        protocol=MQTTProtocolVersion.MQTTv311, manual_ack=True)
        if username is not None:
            c.username_pw_set(username, self.resolved_password())
        if tls is not None:
            c.tls_set_context(tls)
        c.reconnect_delay_set(self.reconnect_min_delay, self.reconnect_max_delay)  # type: ignore[arg-type]
        return c

    def resolved_password(self) -> str | None:
        """The password field, else the environment variable, else None (no password)."""
        if self.password is not None:
            return self.password.get_secret_value()
        return os.environ.get(self.password_env)
