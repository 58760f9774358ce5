"""Typed messages of the bus: one JSON envelope around a typed body.

    {"schema": 1, "type": "TaskStatus", "id": "9f1c...", "correlation_id": "task-42",
     "ts": 1764312000.123, "sender": "site1/line1", "body": {...}}

Every body is a pydantic model with ``extra="forbid"``; receivers validate at the
boundary with :func:`decode` and drop duplicate ids (QoS 1 is at-least-once).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections import OrderedDict
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from fabbus.errors import MessageError
from fabbus.training_config import TrainingConfig

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
_ID = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Body(BaseModel):
    # NaN and infinities are not JSON (RFC 8259): refuse them where they are made.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _b64_in(value: Any) -> bytes:
    """Raw bytes from Python code as they are; base64 text (the wire form) decoded strictly."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"invalid base64: {exc}") from None
    raise ValueError(f"expected base64 text or bytes, got {type(value).__name__}")


Base64Data = Annotated[
    bytes,
    PlainValidator(_b64_in),
    PlainSerializer(lambda b: base64.b64encode(b).decode("ascii"), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "description": "standard base64 (RFC 4648)"}),
]


class TaskState(str, Enum):
    """Task states; AWS IoT Jobs' set plus ACCEPTED (the edge's acknowledgement) and INTERRUPTED."""

    QUEUED = "QUEUED"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    IN_PROGRESS = "IN_PROGRESS"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TIMED_OUT = "TIMED_OUT"
    INTERRUPTED = "INTERRUPTED"


class DeliveryState(str, Enum):
    DOWNLOADING = "DOWNLOADING"
    VERIFYING = "VERIFYING"
    LOADING = "LOADING"
    ACTIVE = "ACTIVE"
    FAILED = "FAILED"
    ROLLED_BACK = "ROLLED_BACK"


# ---- liveness ---------------------------------------------------------------------------------

class NodeState(Body):
    """Retained birth message of a node; its last will is the same with online=false."""

    online: bool
    role: Literal["cloud", "edge", "detector"]
    node: str
    version: str = ""
    since: float
    reason: str = ""


# ---- tasks -------------------------------------------------------------------------------------

class TrainCommand(Body):
    task: str = _ID
    brand: str = _ID
    detectors: list[str] = Field(min_length=1)
    config: TrainingConfig
    base_model: str | None = Field(default=None, description="sha256 of the registry model training starts from "
                                                              "(config.pretrained.source 'base_model')")

    @model_validator(mode="after")
    def _base_model_named(self) -> TrainCommand:
        if self.config.pretrained.source == "base_model" and not _SHA256.fullmatch(self.base_model or ""):
            raise ValueError("config.pretrained.source 'base_model' needs base_model: the sha256 of the registry "
                             "model to start from")
        return self


class DeployCommand(Body):
    task: str = _ID
    brand: str = _ID
    detectors: list[str] = Field(min_length=1)
    model: str
    version: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    canary: bool = False


class CancelCommand(Body):
    task: str = _ID
    reason: str = ""


class TaskStatus(Body):
    task: str = _ID
    kind: Literal["train", "deploy", "cancel"]
    state: TaskState
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class TrainingProgress(Body):
    task: str
    phase: Literal["head", "finetune"] = "head"
    epoch: int = Field(ge=0)
    epochs: int = Field(ge=1)
    batch: int = Field(ge=0)
    batches: int = Field(ge=0)
    percent: float = Field(ge=0, le=100)
    accuracy: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    eta_s: float | None = None
    images_per_s: float | None = None


class CollectionProgress(Body):
    task: str
    detector: str
    samples_total: int = Field(ge=0)
    samples_fetched: int = Field(ge=0)
    samples_cached: int = Field(ge=0)
    bytes_fetched: int = Field(ge=0)
    percent: float = Field(ge=0, le=100)


class DetectorDeployment(Body):
    state: DeliveryState | Literal["PENDING"]
    percent: float = Field(ge=0, le=100)
    reason: str = ""


class DeploymentProgress(Body):
    task: str
    detectors: dict[str, DetectorDeployment]
    percent: float = Field(ge=0, le=100)


class EpochMetrics(Body):
    task: str
    phase: Literal["head", "finetune"] = "head"
    epoch: int = Field(ge=1)
    epochs: int = Field(ge=1)
    loss: float
    accuracy: float
    val_loss: float | None = None
    val_accuracy: float | None = None
    learning_rate: float | None = None
    duration_s: float = Field(ge=0)


# ---- model transfer (upload, fetch, delivery) ------------------------------------------------

class ModelManifest(Body):
    model: str
    brand: str = _ID
    version: int | None = Field(default=None, ge=1)
    format: str = "bundle"
    size: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunk_size: int = Field(ge=1024)
    chunk_count: int = Field(ge=1)
    classes: list[str] = Field(default_factory=list)
    input_shape: list[int] = Field(default_factory=list)
    task: str | None = None
    base_model: str | None = None
    data_snapshot: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    confusion_matrix: list[list[int]] | None = None
    training_config: dict[str, Any] | None = None
    created_at: float | None = None


class ModelChunk(Body):
    model: str
    index: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    data: Base64Data


class ChunkRequest(Body):
    model: str
    chunks: list[int] | None = None
    reason: str = ""


class TransferResult(Body):
    model: str
    state: Literal["ACCEPTED", "REJECTED"]
    reason: str = ""
    version: int | None = None


class DeliveryStatus(Body):
    model: str
    brand: str
    version: int | None = None
    state: DeliveryState
    percent: float = Field(default=0, ge=0, le=100)
    reason: str = ""
    sha256: str | None = None
    previous: str | None = None


class RollbackCommand(Body):
    brand: str = _ID
    reason: str = ""


# ---- detector telemetry and errors ------------------------------------------------------------

class ActiveModel(Body):
    model: str
    version: int | None = None
    sha256: str


class DetectorStatus(Body):
    inspected: int = Field(ge=0)
    ng: int = Field(ge=0)
    missed: int = Field(ge=0)
    latency_ms_p50: float | None = None
    latency_ms_p99: float | None = None
    active_models: dict[str, ActiveModel] = Field(default_factory=dict)
    counters: dict[str, int] = Field(default_factory=dict, description="the station's other counters: triggers, "
                                     "late, no_model, unknown_brand, errors, rolled_back, history_dropped, ...")


class ErrorReport(Body):
    code: str
    message: str
    topic: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


MESSAGE_TYPES: dict[str, type[Body]] = {
    cls.__name__: cls
    for cls in (
        NodeState, TrainCommand, DeployCommand, CancelCommand, TaskStatus, TrainingProgress,
        CollectionProgress, DeploymentProgress, EpochMetrics, ModelManifest, ModelChunk,
        ChunkRequest, TransferResult, DeliveryStatus, RollbackCommand, DetectorStatus, ErrorReport,
    )
}


class Envelope(BaseModel):
    """The envelope every message travels in."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    type: str
    id: str = Field(min_length=1, max_length=64)
    correlation_id: str | None = Field(default=None, max_length=128)
    ts: float
    sender: str = Field(min_length=1, max_length=256)
    body: Any


class Message(BaseModel):
    """A decoded message: envelope fields plus the typed body."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    type: str
    id: str
    correlation_id: str | None
    ts: float
    sender: str
    body: Body


def new_id() -> str:
    return uuid.uuid4().hex


def encode(body: Body, *, sender: str, correlation_id: str | None = None, msg_id: str | None = None) -> bytes:
    """Serialise a body in its envelope."""
    envelope = {
        "schema": SCHEMA_VERSION,
        "type": type(body).__name__,
        "id": msg_id or new_id(),
        "correlation_id": correlation_id,
        "ts": time.time(),
        "sender": sender,
        "body": body.model_dump(mode="json"),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode(payload: bytes, allowed: tuple[str, ...] | None = None, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> Message:
    """Parse and validate a payload; raise MessageError with a clear reason."""
    if len(payload) > max_bytes:
        raise MessageError(f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        text = str(payload, "utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(f"not UTF-8: {exc}") from None
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise MessageError(f"not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("not JSON: nested too deeply") from None
    try:
        env = Envelope.model_validate(raw)
    except ValidationError as exc:
        raise MessageError(f"bad envelope: {_errors(exc)}") from None
    if allowed is not None and env.type not in allowed:
        raise MessageError(f"type {env.type!r} not allowed here (expected one of {list(allowed)})")
    cls = MESSAGE_TYPES.get(env.type)
    if cls is None:
        raise MessageError(f"unknown message type {env.type!r}")
    try:
        body = cls.model_validate(env.body)
    except ValidationError as exc:
        raise MessageError(f"bad {env.type} body: {_errors(exc)}") from None
    return Message(type=env.type, id=env.id, correlation_id=env.correlation_id, ts=env.ts, sender=env.sender, body=body)


def _no_constant(name: str) -> Any:
    raise MessageError(f"not JSON: {name} is not a JSON value")


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5])


class Deduplicator:
    """Remembers the last ``size`` message ids; ``seen(id)`` is True for a repeat."""

    def __init__(self, size: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def seen(self, msg_id: str) -> bool:
        if msg_id in self._ids:
            self._ids.move_to_end(msg_id)
            return True
        self._ids[msg_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False
