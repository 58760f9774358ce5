"""The model registry: content-addressed files on disk and their versions in the database.

    store = ModelStore(config.model_store)
    store.path_for(sha256)                     # <root>/ab/abcdef....bundle: where an upload lands
    mv, created = register_upload(s, store, line, manifest, path)

A version is numbered per line and brand (1, 2, ...). The same bundle uploaded again
for the same line and brand is the same version (idempotent); an invalid bundle or an
unknown brand raises Invalid / NotFound, which the listener reports to the edge.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fabbus.messages import ModelManifest
from fabbus.model_bundle import BundleError, read_bundle

from cloud_app.errors import Invalid
from cloud_app.fleet import find_brand
from cloud_app.models import Change, Line, ModelVersion, Task
from cloud_app.services import record

log = logging.getLogger(__name__)


class ModelStore:
    """Model files named by their sha256 under ``root`` (two-level fan-out)."""

    def __init__(self, root: Path, max_model_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_model_bytes = max_model_bytes

    def relpath(self, sha256: str) -> str:
        return f"{sha256[:2]}/{sha256}.bundle"

    def path_for(self, sha256: str) -> Path:
        return self.root / self.relpath(sha256)

    def abspath(self, rel: str) -> Path:
        return self.root / rel

    def has(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()


def _accuracy(metrics: dict) -> float | None:
    for key in ("test_accuracy", "val_accuracy", "accuracy"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def register_upload(s: Session, store: ModelStore, line: Line, manifest: ModelManifest,
                    path: Path) -> tuple[ModelVersion, bool]:
    """Register the received file as the next version of ``line`` + ``manifest.brand``; (version, created)."""
    brand = find_brand(s, manifest.brand)
    existing = s.scalar(select(ModelVersion).where(ModelVersion.line_id == line.id,
                                                   ModelVersion.brand == brand.name,
                                                   ModelVersion.sha256 == manifest.sha256))
    if existing is not None:
        return existing, False
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        raise Invalid({"bundle": str(exc).replace(str(path), "the upload")}) from None
    if bundle.meta.brand != brand.name:
        raise Invalid({"brand": f"the bundle is for brand {bundle.meta.brand!r}, the manifest says {brand.name!r}"})
    last = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.line_id == line.id,
                                                                 ModelVersion.brand == brand.name))
    task = s.get(Task, manifest.task) if manifest.task else None
    if task is not None and (task.kind != "train" or task.line_id != line.id):
        log.warning("upload %s names task %s of another line or kind; lineage keeps the id only",
                    manifest.model, manifest.task)
        task = None
    parent = None
    if manifest.base_model:
        parent = s.scalar(select(ModelVersion).where(ModelVersion.sha256 == manifest.base_model,
                                                     ModelVersion.brand == brand.name).order_by(ModelVersion.id))
    metrics = dict(manifest.metrics or bundle.meta.metrics)
    confusion = manifest.confusion_matrix or metrics.get("confusion_matrix")
    mv = ModelVersion(
        line_id=line.id, brand=brand.name, version=(last or 0) + 1, sha256=manifest.sha256, size=manifest.size,
        path=store.relpath(manifest.sha256), upload_id=manifest.model, task_id=task.id if task else None,
        base_model=manifest.base_model, parent_id=parent.id if parent else None,
        data_snapshot=manifest.data_snapshot, classes=list(manifest.classes or bundle.meta.classes),
        input_shape=list(manifest.input_shape or bundle.meta.input_shape), metrics=metrics,
        confusion_matrix=confusion, training_config=manifest.training_config,
        manifest=manifest.model_dump(mode="json"), gate_state="pending", gate_reasons=[])
    s.add(mv)
    s.flush()
    s.add(Change(kind="model", ref=str(mv.id)))
    if task is not None:
        record(s, task, "MODEL_UPLOADED", f"registered as {line.key} {brand.name} v{mv.version}",
               source="edge", details={"model_version_id": mv.id, "sha256": mv.sha256,
                                       "accuracy": _accuracy(metrics)})
    log.info("registered %s %s v%s (%s, %s bytes) from upload %s", line.key, brand.name, mv.version,
             mv.sha256[:12], mv.size, manifest.model)
    return mv, True


def accuracy_of(mv: ModelVersion) -> float | None:
    """The accuracy the gate compares: test accuracy, else validation, else training accuracy."""
    return _accuracy(mv.metrics or {})
