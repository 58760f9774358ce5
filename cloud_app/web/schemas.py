"""Request and response bodies of the JSON API, as pydantic models.

The OpenAPI document is generated from these (cloud_app.web.openapi); requests are
validated with them, so a bad body gets 422 with the dotted path of every bad field.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fabbus.training_config import TrainingConfig

Role = Literal["admin", "engineer", "viewer"]


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---- requests -----------------------------------------------------------------------------------

class TrainTaskRequest(_Req):
    """Train a model for a brand on the data of some detectors of a line."""

    line: str = Field(min_length=1, max_length=130, description="the line's key, 'site/line'", examples=["s1/l1"])
    brand: str = Field(min_length=1, max_length=64, examples=["brandA"])
    detectors: list[str] = Field(min_length=1, max_length=256,
                                 description="detector ids on the line whose data is used")
    config: TrainingConfig
    base_model: int | str | None = Field(default=None, description="registry version id or sha256 to start from")


class DeployTaskRequest(_Req):
    """Deploy a registry version to detectors of a line."""

    line: str = Field(min_length=1, max_length=130, examples=["s1/l1"])
    brand: str = Field(min_length=1, max_length=64, examples=["brandA"])
    detectors: list[str] = Field(min_length=1, max_length=256)
    model_version: int | str = Field(description="registry version id, or the model's sha256")
    canary: bool = Field(default=False, description="deploy to the first detector, then the rest if it goes ACTIVE")
    override: bool = Field(default=False, description="required to deploy a version the gate did not approve")


class CancelRequest(_Req):
    reason: str = Field(default="", max_length=500)


class CreateUserRequest(_Req):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    role: Role


class UpdateUserRequest(_Req):
    role: Role | None = None
    active: bool | None = None
    password: str | None = Field(default=None, min_length=8, max_length=256)


class CreateTokenRequest(_Req):
    name: str = Field(default="", max_length=64)


# ---- responses (the shapes of cloud_app.queries; extra keys are allowed) ------------------------

class ErrorOut(BaseModel):
    error: str = Field(description="machine-readable name: not_found, validation_error, unauthorized, ...")
    message: str
    fields: dict[str, str] | None = Field(default=None, description="dotted field path -> what is wrong")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class ActiveModelOut(_Out):
    model: str
    version: int | None = None
    sha256: str
    model_version_id: int | None = None
    activated_at: float


class NodeOut(_Out):
    key: str
    kind: Literal["edge", "detector"]
    name: str
    online: bool
    last_seen: float | None = None
    since: float | None = None
    reason: str = ""
    version: str = ""
    configured: bool = True
    status: dict[str, Any] | None = None
    models: dict[str, ActiveModelOut] | None = Field(default=None, description="brand -> active model (detectors)")


class LineOut(_Out):
    key: str = Field(description="'site/line'")
    name: str
    title: str = ""
    configured: bool = True
    edge: NodeOut | None = None
    detectors: list[NodeOut] = []


class SiteOut(_Out):
    site: str
    title: str = ""
    lines: list[LineOut] = []


class BrandOut(_Out):
    name: str
    classes: list[str]
    ok_class: str


class BrandListOut(BaseModel):
    brands: list[BrandOut]


class FleetOut(BaseModel):
    sites: list[SiteOut]
    brands: list[BrandOut]


class VersionRef(_Out):
    id: int
    version: int
    brand: str
    line: str
    model: str = Field(description="the model id on the bus (its sha256)")
    gate_state: str


class DeploymentOut(_Out):
    task: str
    detector: str
    node: str
    brand: str
    state: str
    percent: float
    reason: str = ""
    override_by: str | None = None
    model_version: VersionRef | None = None
    updated_at: float


class TaskOut(_Out):
    id: str
    kind: str
    line: str
    brand: str
    detectors: list[str]
    state: str
    reason: str = ""
    config: dict[str, Any] = {}
    base_model: str | None = None
    model_version: VersionRef | None = None
    created_by: str
    created_at: float
    updated_at: float
    finished_at: float | None = None
    progress: dict[str, Any] | None = None
    percent: float


class TaskEventOut(_Out):
    id: int
    state: str
    reason: str = ""
    details: dict[str, Any] = {}
    source: str
    ts: float


class EpochOut(_Out):
    phase: str
    epoch: int
    epochs: int
    loss: float
    accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    learning_rate: float | None = None
    duration_s: float
    ts: float


class ProgressPointOut(_Out):
    id: int
    phase: str
    epoch: int
    batch: int
    percent: float = Field(description="of the whole training; the x axis of the per-batch chart")
    accuracy: float | None = None
    loss: float | None = None
    ts: float


class TaskDetailOut(TaskOut):
    events: list[TaskEventOut] = []
    epochs: list[EpochOut] = []
    points: list[ProgressPointOut] = []
    deployments: list[DeploymentOut] = []
    models: list[VersionRef] = Field(default=[], description="registry versions this training produced")


class TaskListOut(BaseModel):
    tasks: list[TaskOut]


class Lineage(_Out):
    task: str | None = None
    data_snapshot: str | None = None
    base_model: str | None = None
    parent: VersionRef | None = None
    training_config: dict[str, Any] | None = None


class ModelOut(VersionRef):
    sha256: str
    size: int
    classes: list[str] = []
    input_shape: list[Any] = []
    metrics: dict[str, Any] = {}
    confusion_matrix: list[list[Any]] | None = None
    gate_reasons: list[str] = []
    evaluated_at: float | None = None
    created_at: float
    lineage: Lineage
    active_on: list[str] = Field(default=[], description="detector keys where this version is active now")


class ModelDetailOut(ModelOut):
    evaluation: dict[str, Any] | None = None
    manifest: dict[str, Any] = {}
    ancestors: list[VersionRef] = Field(default=[], description="the base version, its base, ...")
    deployments: list[DeploymentOut] = []


class ModelListOut(BaseModel):
    models: list[ModelOut]


class UserOut(_Out):
    id: int
    username: str
    role: str
    active: bool
    created_at: float


class UserListOut(BaseModel):
    users: list[UserOut]


class TokenOut(_Out):
    id: int
    name: str
    created_at: float
    last_used_at: float | None = None
    revoked: bool


class NewTokenOut(TokenOut):
    token: str = Field(description="shown once; only its hash is stored")


class TokenListOut(BaseModel):
    tokens: list[TokenOut]
