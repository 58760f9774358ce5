"""Evaluation metrics on a hand-made confusion case, checked against values worked out by hand."""

from __future__ import annotations

import pytest

from edge_support import TF_WARNINGS
from edge_node.evaluation import confusion_matrix, from_predictions

pytestmark = TF_WARNINGS

CLASSES = ["good", "scratch", "spot"]
# truth:      4 good, 3 scratch, 3 spot
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
# predicted:  good 3 right + 1 as spot; scratch 2 right + 1 as good; spot all 3 right
Y_PRED = [0, 0, 0, 2, 1, 1, 0, 2, 2, 2]


def test_hand_made_confusion_case() -> None:
    ev = from_predictions(Y_TRUE, Y_PRED, CLASSES)
    assert ev.confusion_matrix == [[3, 0, 1], [1, 2, 0], [0, 0, 3]]  # rows: truth, columns: prediction
    assert all(isinstance(v, int) for row in ev.confusion_matrix for v in row)
    assert ev.accuracy == pytest.approx(8 / 10)
    assert ev.precision == pytest.approx({"good": 3 / 4, "scratch": 2 / 2, "spot": 3 / 4})
    assert ev.recall == pytest.approx({"good": 3 / 4, "scratch": 2 / 3, "spot": 3 / 3})
    f1 = {"good": 0.75, "scratch": 2 * 1 * (2 / 3) / (1 + 2 / 3), "spot": 2 * 0.75 / 1.75}
    assert ev.f1 == pytest.approx(f1)
    assert ev.macro_f1 == pytest.approx(sum(f1.values()) / 3)
    assert ev.support == {"good": 4, "scratch": 3, "spot": 3}
    metrics = ev.as_metrics()
    assert metrics["test_accuracy"] == pytest.approx(0.8) and metrics["test_samples"] == 10


def test_a_class_never_predicted_or_absent_scores_zero() -> None:
    ev = from_predictions([0, 0, 1], [0, 0, 0], CLASSES)
    assert ev.precision["scratch"] == 0.0 and ev.recall["scratch"] == 0.0 and ev.f1["scratch"] == 0.0
    assert ev.recall["spot"] == 0.0 and ev.support["spot"] == 0
    assert ev.precision["good"] == pytest.approx(2 / 3) and ev.recall["good"] == 1.0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="3 true labels but 2 predictions"):
        from_predictions([0, 1, 2], [0, 1], CLASSES)
    with pytest.raises(ValueError, match="class index 3 outside 0..2"):
        from_predictions([0, 3], [0, 1], CLASSES)
    assert confusion_matrix([], [], 2) == [[0, 0], [0, 0]]
