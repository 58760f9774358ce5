"""The detector's one config model (config/detector.yaml); secrets come from the environment.

Relative paths are taken from the config file's folder. The edges' history tokens
are read from the environment variable ``history_server.tokens_env`` (comma-separated),
the MQTT password from ``mqtt.password_env`` (fabbus.mqtt_config).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from detector_node.camera_sim import ALL_CLASSES, GOOD
from detector_node.delivery import DeliveryConfig
from detector_node.history import HistoryConfig
from detector_node.history_server import HistoryServerConfig
from detector_node.inspection import InspectionConfig
from detector_node.mcu_sim import McuSimConfig
from detector_node.names import NAME_PATTERN, check_name
from detector_node.serial_link import SerialConfig
from fabbus.config_file import load_config_file
from fabbus.errors import ConfigError, ContractError
from fabbus.mqtt_config import MqttConfig
from fabbus.topics import check_id

Verdict = Literal["OK", "NG"]
BrandName = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeIds(_Cfg):
    site: str
    line: str
    det: str

    @field_validator("site", "line", "det")
    @classmethod
    def _id(cls, value: str) -> str:
        try:
            return check_id("id", value)
        except ContractError as exc:
            raise ValueError(str(exc)) from None


class CameraSettings(_Cfg):
    kind: Literal["simulator"] = Field(default="simulator", description="the only driver so far")
    seed: int = Field(default=0, ge=0)
    defect_rate: float = Field(default=0.3, ge=0, le=1)


class BrandConfig(_Cfg):
    classes: list[str] = Field(default_factory=lambda: list(ALL_CLASSES), min_length=2)
    ok_class: str = GOOD
    default_verdict: Verdict = Field(default="NG", description="answer while the brand has no model")
    error_verdict: Verdict = Field(default="NG", description="answer when the model fails on an image")

    @model_validator(mode="after")
    def _ok_known(self) -> BrandConfig:
        for c in self.classes:
            check_name("class", c)
        if self.ok_class not in self.classes:
            raise ValueError(f"ok_class {self.ok_class!r} is not one of the classes {self.classes}")
        return self


class ModelsConfig(_Cfg):
    num_threads: int = Field(default=1, ge=1, le=64, description="LiteRT (XNNPACK) threads per model")
    probation_inferences: int = Field(default=20, ge=0, description="a new model's first N inferences are checked")
    keep: int = Field(default=2, ge=2, description="models kept per brand: the active one and previous ones")


class HistoryServerSection(_Cfg):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8750, ge=0, le=65535)
    tokens_env: str = Field(default="FAB_EDGE_TOKENS", description="env var: comma-separated edge tokens")
    request_timeout_s: float = Field(default=30.0, gt=0)

    def build(self) -> HistoryServerConfig:
        """The server's config with the tokens from the environment; ConfigError naming the key if absent."""
        raw = os.environ.get(self.tokens_env, "")
        tokens = [SecretStr(t.strip()) for t in raw.split(",") if t.strip()]
        try:
            return HistoryServerConfig(host=self.host, port=self.port, tokens=tokens,
                                       request_timeout_s=self.request_timeout_s)
        except ValidationError as exc:
            why = "is not set" if not tokens else exc.errors()[0]["msg"]
            raise ConfigError(f"history_server.tokens_env: environment variable {self.tokens_env} {why}") from None


class DetectorConfig(_Cfg):
    """Everything a station needs; see config/detector.yaml for a commented example."""

    ids: NodeIds
    mqtt: MqttConfig = MqttConfig()
    serial: SerialConfig
    camera: CameraSettings = CameraSettings()
    image_size: int = Field(default=64, ge=16, le=1024, description="side of the square frames the camera takes")
    brands: dict[BrandName, BrandConfig] = Field(min_length=1)
    params_dir: Path = Field(default=Path("var/detector/params"), description="params/<brand>/ model folders")
    history: HistoryConfig = HistoryConfig()
    history_server: HistoryServerSection = HistoryServerSection()
    inspection: InspectionConfig = InspectionConfig()
    models: ModelsConfig = ModelsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    status_interval_s: float = Field(default=5.0, gt=0, description="retained detector_status period")
    error_interval_s: float = Field(default=5.0, ge=0, description="at most one detector_error per code per period")
    simulator: McuSimConfig = Field(default_factory=McuSimConfig, description="--simulate-mcu: the MCU simulator")

    @model_validator(mode="after")
    def _simulated_classes(self) -> DetectorConfig:
        if self.camera.kind == "simulator":
            for name, brand in self.brands.items():
                unknown = [c for c in brand.classes if c not in ALL_CLASSES]
                if unknown:
                    raise ValueError(f"brands.{name}.classes: the camera simulator knows only {list(ALL_CLASSES)}, "
                                     f"not {unknown}")
        return self

    def resolve(self, base: Path) -> DetectorConfig:
        """Paths made absolute against ``base`` (the config file's folder)."""
        data = self.model_copy(deep=True)
        data.params_dir = base / self.params_dir
        data.history.root = base / self.history.root
        return data


def load_config(path: str | Path) -> DetectorConfig:
    p = Path(path)
    return load_config_file(p, DetectorConfig)
