"""Export a trained model: the Keras file, a LiteRT (TFLite) flatbuffer, and the model bundle.

    exported = export_model(result.model, config, out_dir, brand="acme", evaluation=result.evaluation,
                            history=result.history)
    exported.path, exported.size, exported.sha256, exported.meta

The bundle (fabbus.model_bundle) holds model.tflite (what detectors run with LiteRT),
model.keras (for the cloud's evaluation and incremental training) and meta.json: classes,
input shape, colour mode, normalisation, architecture, brand and ``metrics`` (the final
epoch's loss/accuracy, the test metrics and the confusion matrix).
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from edge_node.architectures import input_shape
from edge_node.evaluation import Evaluation
from fabbus.model_bundle import BundleMeta, sha256_file, write_bundle
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

BUNDLE_NAME = "model.zip"


@dataclass(frozen=True)
class ExportedModel:
    path: Path            # the bundle
    size: int
    sha256: str
    keras_path: Path
    tflite_path: Path
    meta: BundleMeta


def to_tflite(model: keras.Model) -> bytes:
    """The model as a TFLite flatbuffer, called with training=False (as TFLiteConverter.from_keras_model).

    TFLiteConverter.from_keras_model exports a SavedModel first and prints every variable while
    doing so; this does the same export quietly and converts that SavedModel.
    """
    with tempfile.TemporaryDirectory(prefix="tflite-") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        signature = [tf.TensorSpec(x.shape, x.dtype, name=x.name) for x in model.inputs]
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False), input_signature=signature)
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return converter.convert()


def build_meta(config: TrainingConfig, brand: str, *, evaluation: Evaluation | None = None,
               history: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> BundleMeta:
    metrics: dict[str, Any] = {}
    if history:
        last = history[-1]
        metrics.update({k: last[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in last})
        metrics["epochs_trained"] = len(history)
    if evaluation is not None:
        metrics.update(evaluation.as_metrics())
        metrics["confusion_matrix"] = evaluation.confusion_matrix
    metrics.update(extra or {})
    return BundleMeta(classes=list(config.classes), input_shape=input_shape(config),
                      color_mode=config.preprocessing.color_mode, normalization=config.preprocessing.normalization,
                      architecture=config.architecture, brand=brand, created_at=time.time(), metrics=metrics)


def export_model(model: keras.Model, config: TrainingConfig, out_dir: str | os.PathLike[str], *, brand: str,
                 evaluation: Evaluation | None = None, history: list[dict[str, Any]] | None = None,
                 extra_metrics: dict[str, Any] | None = None, name: str = BUNDLE_NAME) -> ExportedModel:
    """Write model.keras, model.tflite and the bundle ``name`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras_path, tflite_path = out / "model.keras", out / "model.tflite"
    model.save(keras_path)
    tflite = to_tflite(model)
    tmp = tflite_path.with_name(f".{tflite_path.name}.tmp")
    tmp.write_bytes(tflite)
    os.replace(tmp, tflite_path)
    meta = build_meta(config, brand, evaluation=evaluation, history=history, extra=extra_metrics)
    path = write_bundle(out / name, tflite, meta, keras_path=keras_path)
    size, digest = path.stat().st_size, sha256_file(path)
    log.info("exported %s: %s bytes (tflite %s bytes), sha256 %s", path, size, len(tflite), digest)
    return ExportedModel(path, size, digest, keras_path, tflite_path, meta)
