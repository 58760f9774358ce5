"""One valid example of every message type, shared by the generated docs and the tests.

Everything here is fixed (ids, timestamps, hashes), so the documents generated from
it are byte-for-byte stable.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from fabbus.messages import (
    MESSAGE_TYPES, SCHEMA_VERSION, ActiveModel, Body, CancelCommand, ChunkRequest, CollectionProgress,
    DeliveryState, DeliveryStatus, DeployCommand, DeploymentProgress, DetectorDeployment, DetectorStatus,
    EpochMetrics, ErrorReport, ModelChunk, ModelManifest, NodeState, RollbackCommand, TaskState, TaskStatus,
    TrainCommand, TrainingProgress, TransferResult,
)
from fabbus.acl import username_for
from fabbus.topics import Contract, Topic
from fabbus.training_config import FineTuneConfig, GeneratorConfig, TrainingConfig

EXAMPLE_TS = 1764312000.0
EXAMPLE_IDS = {
    "site": "site1", "line": "line1", "det": "det1", "task": "task-42",
    "model": "m-3f2a9c", "brand": "brandA", "node": "cloud-app",
}
CHUNK_DATA = b"\x89LITERT example chunk\x00\x01\x02"
_SHA_MODEL = hashlib.sha256(b"example model file").hexdigest()
_SHA_CHUNK = hashlib.sha256(CHUNK_DATA).hexdigest()
_TASK, _MODEL, _BRAND = EXAMPLE_IDS["task"], EXAMPLE_IDS["model"], EXAMPLE_IDS["brand"]


def _training_config() -> TrainingConfig:
    return TrainingConfig(
        classes=["ok", "scratch", "dent"],
        architecture="mobilenet_v2",
        input_size=96,
        epochs=10,
        generators=GeneratorConfig(batch_size=32, class_weights="balanced"),
        fine_tune=FineTuneConfig(enabled=True, epochs=3),
    )


def _manifest() -> ModelManifest:
    return ModelManifest(
        model=_MODEL, brand=_BRAND, version=3, format="bundle", size=2_400_000, sha256=_SHA_MODEL,
        chunk_size=262_144, chunk_count=10, classes=["ok", "scratch", "dent"], input_shape=[96, 96, 3],
        task=_TASK, data_snapshot="snap-7c1e", metrics={"accuracy": 0.97, "loss": 0.09},
        confusion_matrix=[[50, 1, 0], [2, 40, 1], [0, 1, 45]], created_at=EXAMPLE_TS,
    )


_BUILDERS = {
    "NodeState": lambda: NodeState(online=True, role="edge", node="site1/line1", version="0.1.0",
                                   since=EXAMPLE_TS),
    "TrainCommand": lambda: TrainCommand(task=_TASK, brand=_BRAND, detectors=["det1", "det2"],
                                         config=_training_config()),
    "DeployCommand": lambda: DeployCommand(task=_TASK, brand=_BRAND, detectors=["det1"], model=_MODEL,
                                           version=3, sha256=_SHA_MODEL, canary=True),
    "CancelCommand": lambda: CancelCommand(task=_TASK, reason="canceled by an engineer"),
    "TaskStatus": lambda: TaskStatus(task=_TASK, kind="train", state=TaskState.IN_PROGRESS,
                                     details={"phase": "training"}),
    "TrainingProgress": lambda: TrainingProgress(task=_TASK, epoch=3, epochs=10, batch=12, batches=40,
                                                 percent=23.0, accuracy=0.91, loss=0.27, eta_s=410.0),
    "CollectionProgress": lambda: CollectionProgress(task=_TASK, detector="det1", samples_total=1200,
                                                     samples_fetched=300, samples_cached=700,
                                                     bytes_fetched=4_500_000, percent=83.3),
    "DeploymentProgress": lambda: DeploymentProgress(
        task=_TASK, percent=50.0,
        detectors={"det1": DetectorDeployment(state=DeliveryState.ACTIVE, percent=100.0),
                   "det2": DetectorDeployment(state="PENDING", percent=0.0)}),
    "EpochMetrics": lambda: EpochMetrics(task=_TASK, epoch=3, epochs=10, loss=0.27, accuracy=0.91,
                                         val_loss=0.31, val_accuracy=0.89, learning_rate=0.001,
                                         duration_s=41.5),
    "ModelManifest": _manifest,
    "ModelChunk": lambda: ModelChunk(model=_MODEL, index=0, sha256=_SHA_CHUNK, data=CHUNK_DATA),
    "ChunkRequest": lambda: ChunkRequest(model=_MODEL, chunks=[3, 7], reason="sha256 mismatch"),
    "TransferResult": lambda: TransferResult(model=_MODEL, state="ACCEPTED", version=3),
    "DeliveryStatus": lambda: DeliveryStatus(model=_MODEL, brand=_BRAND, version=3,
                                             state=DeliveryState.ACTIVE, percent=100.0, sha256=_SHA_MODEL,
                                             previous="m-0b77d1"),
    "RollbackCommand": lambda: RollbackCommand(brand=_BRAND, reason="accuracy dropped after deploy"),
    "DetectorStatus": lambda: DetectorStatus(
        inspected=10_400, ng=37, missed=0, latency_ms_p50=0.9, latency_ms_p99=2.4,
        active_models={_BRAND: ActiveModel(model=_MODEL, version=3, sha256=_SHA_MODEL)}),
    "ErrorReport": lambda: ErrorReport(code="chunk_corrupt", message="chunk 3 failed its sha256 check",
                                       topic="fab/v1/site1/line1/det/det1/model/brandA/chunk",
                                       detail={"index": 3}),
}


def example_body(type_name: str) -> Body:
    """A valid example body of a message type (KeyError for an unknown type)."""
    if type_name not in MESSAGE_TYPES:
        raise KeyError(type_name)
    return _BUILDERS[type_name]()


def example_envelope(type_name: str, sender: str = "site1/line1") -> dict[str, Any]:
    """The JSON document of an example message, envelope included, with fixed id and timestamp."""
    body = example_body(type_name)
    return {
        "schema": SCHEMA_VERSION,
        "type": type_name,
        "id": hashlib.sha256(type_name.encode()).hexdigest()[:32],
        "correlation_id": _TASK,
        "ts": EXAMPLE_TS,
        "sender": sender,
        "body": json.loads(json.dumps(body.model_dump(mode="json"))),
    }


def example_topic(topic: Topic) -> str:
    """The topic filled with the example ids."""
    return topic.format(**{p: EXAMPLE_IDS[p] for p in topic.placeholders})


def example_sender(role: str, c: Contract) -> str:
    """The sender of an example message published by a role: its username."""
    if c.roles[role].scope is None:
        return EXAMPLE_IDS["node"]
    return username_for(role, c, **EXAMPLE_IDS)


def example_message(type_name: str, c: Contract) -> dict[str, Any]:
    """The example envelope of a type, sent by the first publisher of the first topic carrying it."""
    role = next((t.publishers[0] for t in c.topics.values() if type_name in t.payload), None)
    return example_envelope(type_name, example_sender(role, c) if role else EXAMPLE_IDS["node"])
