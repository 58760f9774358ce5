"""The cloud database: SQLAlchemy 2 typed models (SQLite by default, PostgreSQL by URL).

Conventions: times are UNIX epoch seconds (float, UTC), as on the bus; JSON columns hold
plain dicts and lists (assign a new object to change one); states are strings from the
constants below. A line is addressed by its key ``"site/line"`` (the edge's broker
username), a detector by its node key ``"site/line/det/d1"``. The schema is created by
Alembic (cloud_app/migrations), never by ``create_all`` outside tests of the migrations.

    Site 1-n Line 1-n Node (edge | detector) 1-n NodeEvent
    Line 1-n Task 1-n TaskEvent, EpochMetric, ProgressPoint, Deployment
    Line 1-n ModelVersion (per brand, version 1, 2, ...) 1-n Deployment; DetectorModel = active model per brand
    Change: an append-only feed of what changed (polled by the web layer's event stream)
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "engineer", "viewer")
TASK_KINDS = ("train", "deploy", "cancel")
# fabbus.messages.TaskState values; QUEUED until the edge acknowledges
TASK_STATES = ("QUEUED", "ACCEPTED", "REJECTED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELED", "TIMED_OUT",
               "INTERRUPTED")
ACTIVE_TASK_STATES = ("QUEUED", "ACCEPTED", "IN_PROGRESS")
FINAL_TASK_STATES = ("REJECTED", "SUCCEEDED", "FAILED", "CANCELED")   # the edge's last word
GATE_STATES = ("pending", "approved", "rejected")
DEPLOYMENT_STATES = ("PENDING", "DOWNLOADING", "VERIFYING", "LOADING", "ACTIVE", "FAILED", "ROLLED_BACK")
NODE_KINDS = ("edge", "detector")

NAMING = {"ix": "ix_%(table_name)s_%(column_0_N_name)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
          "ck": "ck_%(table_name)s_%(constraint_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s",
          "pk": "pk_%(table_name)s"}


def now() -> float:
    return time.time()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, list[str]: JSON, float: Float}


# ---- users -------------------------------------------------------------------------------------

class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))                 # admin | engineer | viewer
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Base):
    """A bearer token for scripts; only its sha256 is stored (cloud_app.users makes and checks them)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float, default=now)
    last_used_at: Mapped[float | None] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(default=False)

    user: Mapped[User] = relationship(back_populates="tokens")


# ---- fleet -------------------------------------------------------------------------------------

class Site(Base):
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)    # the bus id, e.g. "s1"
    title: Mapped[str] = mapped_column(String(200), default="")

    lines: Mapped[list[Line]] = relationship(back_populates="site", order_by="Line.name")


class Line(Base):
    __tablename__ = "lines"
    __table_args__ = (UniqueConstraint("site_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    name: Mapped[str] = mapped_column(String(64))                 # the bus id, e.g. "l1"
    key: Mapped[str] = mapped_column(String(130), unique=True)    # "s1/l1"
    title: Mapped[str] = mapped_column(String(200), default="")
    configured: Mapped[bool] = mapped_column(default=True)        # False: discovered from a node's birth

    site: Mapped[Site] = relationship(back_populates="lines")
    nodes: Mapped[list[Node]] = relationship(back_populates="line", order_by="Node.key")


class Brand(Base):
    """A product brand and the classes its models must have (first: the OK class)."""

    __tablename__ = "brands"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    classes: Mapped[list[str]] = mapped_column(JSON)
    ok_class: Mapped[str] = mapped_column(String(64))


class Node(Base):
    """An edge server (one per line) or a detector, with its liveness and latest telemetry."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))                 # edge | detector
    name: Mapped[str] = mapped_column(String(64))                 # "edge" or the detector id "d1"
    key: Mapped[str] = mapped_column(String(200), unique=True)    # its broker username: "s1/l1", "s1/l1/det/d1"
    configured: Mapped[bool] = mapped_column(default=True)
    online: Mapped[bool] = mapped_column(default=False)
    last_seen: Mapped[float | None] = mapped_column(Float)        # last message of any kind from it
    state_since: Mapped[float | None] = mapped_column(Float)      # NodeState.since of the current state
    state_ts: Mapped[float | None] = mapped_column(Float)         # when the cloud applied that state (its clock)
    reason: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[dict[str, Any] | None] = mapped_column(JSON)   # latest DetectorStatus body (detectors)

    line: Mapped[Line] = relationship(back_populates="nodes")
    models: Mapped[list[DetectorModel]] = relationship(back_populates="node", order_by="DetectorModel.brand")


class NodeEvent(Base):
    """Online/offline history of a node."""

    __tablename__ = "node_events"
    __table_args__ = (UniqueConstraint("node_id", "msg_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    online: Mapped[bool]
    reason: Mapped[str] = mapped_column(Text, default="")
    ts: Mapped[float] = mapped_column(Float)             # when the cloud received it
    msg_id: Mapped[str | None] = mapped_column(String(64))


# ---- tasks -------------------------------------------------------------------------------------

class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_state_kind", "state", "kind"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)   # also the bus correlation id
    kind: Mapped[str] = mapped_column(String(16))                    # train | deploy | cancel
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), index=True)
    brand: Mapped[str] = mapped_column(String(64))
    detectors: Mapped[list[str]] = mapped_column(JSON)               # detector ids on the line: ["d1", "d2"]
    state: Mapped[str] = mapped_column(String(16), default="QUEUED")
    reason: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)   # train: TrainingConfig; deploy: options
    base_model: Mapped[str | None] = mapped_column(String(64))       # train: registry model id to start from
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True))                 # deploy: the version deployed
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)
    finished_at: Mapped[float | None] = mapped_column(Float)
    # dispatch bookkeeping (cloud_app.dispatch)
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0)
    dispatched_at: Mapped[float | None] = mapped_column(Float)       # last command publish
    dispatch_lease: Mapped[float | None] = mapped_column(Float)      # a worker waits for the ack until then
    accepted_at: Mapped[float | None] = mapped_column(Float)
    last_heard_at: Mapped[float | None] = mapped_column(Float)       # last status/progress/metrics from the edge
    edge_status_ts: Mapped[float | None] = mapped_column(Float)      # envelope ts of the newest status applied
    cancel_requested_by: Mapped[str | None] = mapped_column(String(64))
    cancel_requested_at: Mapped[float | None] = mapped_column(Float)
    # latest progress: {"type": "TrainingProgress", ...body}; collection per detector under "collection"
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    percent: Mapped[float] = mapped_column(Float, default=0.0)

    line: Mapped[Line] = relationship()
    model_version: Mapped[ModelVersion | None] = relationship(foreign_keys=[model_version_id])
    events: Mapped[list[TaskEvent]] = relationship(order_by="TaskEvent.id", cascade="all, delete-orphan")
    deployments: Mapped[list[Deployment]] = relationship(order_by="Deployment.detector",
                                                         cascade="all, delete-orphan")


class TaskEvent(Base):
    """Every status change of a task, from the cloud (dispatch, timeouts) or the edge."""

    __tablename__ = "task_events"
    __table_args__ = (UniqueConstraint("task_id", "msg_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(32))       # a task state, or DISPATCHED / CANCEL_REQUESTED / ...
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str] = mapped_column(String(16))      # cloud | edge
    ts: Mapped[float] = mapped_column(Float, default=now)
    msg_id: Mapped[str | None] = mapped_column(String(64))


class EpochMetric(Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("task_id", "phase", "epoch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16))       # head | finetune
    epoch: Mapped[int]
    epochs: Mapped[int]
    loss: Mapped[float]
    accuracy: Mapped[float]
    val_loss: Mapped[float | None]
    val_accuracy: Mapped[float | None]
    learning_rate: Mapped[float | None]
    duration_s: Mapped[float]
    ts: Mapped[float] = mapped_column(Float, default=now)


class ProgressPoint(Base):
    """Per-batch samples of a training for the charts; thinned to at most ``db.max_progress_points`` a task."""

    __tablename__ = "progress_points"
    __table_args__ = (UniqueConstraint("task_id", "phase", "epoch", "batch"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    phase: Mapped[str] = mapped_column(String(16))
    epoch: Mapped[int]
    batch: Mapped[int]
    percent: Mapped[float]
    accuracy: Mapped[float | None]
    loss: Mapped[float | None]
    ts: Mapped[float] = mapped_column(Float, default=now)


# ---- model registry ----------------------------------------------------------------------------

class ModelVersion(Base):
    """A model in the registry: version N of a line and brand, stored content-addressed by sha256.

    ``model_id`` (the sha256) is the id the bus uses for it (DeployCommand.model, fetch topics).
    """

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("line_id", "brand", "version"), UniqueConstraint("line_id", "brand", "sha256"))

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(ForeignKey("lines.id"), index=True)
    brand: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int]
    path: Mapped[str] = mapped_column(Text)              # relative to model_store: "ab/abcdef....bundle"
    upload_id: Mapped[str] = mapped_column(String(64))   # the model id the edge uploaded it under
    task_id: Mapped[str | None] = mapped_column(ForeignKey("tasks.id"), index=True)   # the training task
    base_model: Mapped[str | None] = mapped_column(String(64))   # sha256 of the model it started from
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))    # base_model, resolved
    data_snapshot: Mapped[str | None] = mapped_column(String(128))
    classes: Mapped[list[str]] = mapped_column(JSON, default=list)
    input_shape: Mapped[list[Any]] = mapped_column(JSON, default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    confusion_matrix: Mapped[list[Any] | None] = mapped_column(JSON)
    training_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)   # the upload's ModelManifest
    gate_state: Mapped[str] = mapped_column(String(16), default="pending")   # pending | approved | rejected
    gate_reasons: Mapped[list[str]] = mapped_column(JSON, default=list)      # why rejected (empty if approved)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)          # checks, latency, baseline
    evaluated_at: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float, default=now)

    line: Mapped[Line] = relationship()
    parent: Mapped[ModelVersion | None] = relationship(remote_side=[id])

    @property
    def model_id(self) -> str:
        return self.sha256


class Deployment(Base):
    """One detector's part of a deploy task."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("task_id", "node_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    detector: Mapped[str] = mapped_column(String(64))    # detector id on the line, "d1"
    brand: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    reason: Mapped[str] = mapped_column(Text, default="")
    override_by: Mapped[str | None] = mapped_column(String(64))   # who deployed a non-approved version
    created_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)

    node: Mapped[Node] = relationship()
    model_version: Mapped[ModelVersion] = relationship()


class DetectorModel(Base):
    """The model active on a detector for a brand, as the detector reports it."""

    __tablename__ = "detector_models"
    __table_args__ = (UniqueConstraint("node_id", "brand"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"), index=True)
    brand: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))      # the model id the detector reports
    version: Mapped[int | None]
    sha256: Mapped[str] = mapped_column(String(64))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))  # None: not in registry
    activated_at: Mapped[float] = mapped_column(Float, default=now)
    updated_at: Mapped[float] = mapped_column(Float, default=now)

    node: Mapped[Node] = relationship(back_populates="models")
    model_version: Mapped[ModelVersion | None] = relationship()


# ---- change feed -------------------------------------------------------------------------------

class Change(Base):
    """Append-only feed of changes: the web layer's event stream polls ``id > last``.

    kind: task | progress | metrics | node | deployment | model; ref: task id, node key or model version id.
    """

    __tablename__ = "changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    ref: Mapped[str] = mapped_column(String(200))
    ts: Mapped[float] = mapped_column(Float, default=now, index=True)
