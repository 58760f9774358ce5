"""Evaluation on the held-out test split: accuracy, per-class precision and recall, confusion matrix, F1.

    ev = evaluate_model(model, splits.test, config)
    ev.accuracy, ev.precision["scratch"], ev.confusion_matrix, ev.macro_f1, ev.as_metrics()

The confusion matrix is ``matrix[true][predicted]`` in the order of ``classes`` (rows are the
truth, as in scikit-learn). A precision or recall with nothing to divide by (a class never
predicted, or absent from the test split) is 0.0, and F1 likewise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from edge_node.dataset import Sample
from edge_node.pipeline import build_dataset
from fabbus.training_config import TrainingConfig


@dataclass(frozen=True)
class Evaluation:
    classes: list[str]
    samples: int
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    macro_f1: float
    support: dict[str, int]
    confusion_matrix: list[list[int]]

    def as_metrics(self) -> dict[str, Any]:
        """JSON-ready, for the bundle's meta and the upload manifest."""
        return {"test_samples": self.samples, "test_accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "precision": dict(self.precision), "recall": dict(self.recall), "f1": dict(self.f1),
                "support": dict(self.support)}


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> list[list[int]]:
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return m.tolist()


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def from_predictions(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> Evaluation:
    """Metrics of predicted class indices against the true ones."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    n = len(classes)
    bad = [v for v in (*y_true, *y_pred) if not 0 <= int(v) < n]
    if bad:
        raise ValueError(f"class index {bad[0]} outside 0..{n - 1}")
    cm = confusion_matrix(y_true, y_pred, n)
    m = np.asarray(cm, dtype=np.int64).reshape(n, n)
    tp, predicted, actual = np.diag(m), m.sum(axis=0), m.sum(axis=1)
    precision = {c: _ratio(tp[i], predicted[i]) for i, c in enumerate(classes)}
    recall = {c: _ratio(tp[i], actual[i]) for i, c in enumerate(classes)}
    f1 = {c: _ratio(2 * precision[c] * recall[c], precision[c] + recall[c]) for c in classes}
    return Evaluation(
        classes=list(classes), samples=len(y_true), accuracy=_ratio(int(tp.sum()), len(y_true)),
        precision=precision, recall=recall, f1=f1, macro_f1=float(np.mean(list(f1.values()))),
        support={c: int(actual[i]) for i, c in enumerate(classes)}, confusion_matrix=cm)


def evaluate_model(model: keras.Model, samples: Sequence[Sample], config: TrainingConfig) -> Evaluation:
    """Predict the samples in batches (never one by one) and score the predictions."""
    index = {c: i for i, c in enumerate(config.classes)}
    y_true = [index[s.label] for s in samples]
    if not samples:
        return from_predictions([], [], config.classes)
    ds = build_dataset(samples, config, training=False, cache=False)
    probabilities = model.predict(ds, verbose=0)
    return from_predictions(y_true, np.argmax(probabilities, axis=1).tolist(), config.classes)
