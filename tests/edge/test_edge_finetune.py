"""MobileNetV2 (alpha 0.35, 32x32) from a local weights file: head phase, then fine-tuning; cancel and resume."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from edge_support import TF_WARNINGS, RecordingReporter, config
from edge_node.architectures import build_base
from edge_node.dataset import Dataset
from edge_node.errors import TrainingCanceled
from edge_node.trainer import train
from fabbus.messages import TrainingProgress

pytestmark = TF_WARNINGS
TOP = 10


def test_mobilenet_v2_fine_tuning_runs_both_phases(small_data: Dataset, tmp_path: Path) -> None:
    weights = tmp_path / "mobilenet_v2_0.35_no_top.weights.h5"
    file_base = build_base(config(architecture="mobilenet_v2", alpha=0.35))
    file_base.save_weights(weights)
    cfg = config(classes=["good", "spot"], architecture="mobilenet_v2", alpha=0.35, epochs=1,
                 generators={"batch_size": 8, "validation_split": 0.2, "test_split": 0.0},
                 pretrained={"source": "file", "path": str(weights)},
                 fine_tune={"enabled": True, "unfreeze_top_layers": TOP, "epochs": 2, "learning_rate": 1e-4})

    cancel = threading.Event()

    def cancel_in_finetune_epoch_2(p: TrainingProgress) -> None:
        if p.phase == "finetune" and p.epoch == 2:
            cancel.set()

    first = RecordingReporter(cancel_in_finetune_epoch_2)
    with pytest.raises(TrainingCanceled, match="canceled in phase finetune, epoch 2, batch 2"):
        train(cfg, small_data, tmp_path / "work", first, cancel, progress_interval_s=0)
    assert [(m.phase, m.epoch, m.epochs) for m in first.epochs] == [("head", 1, 1), ("finetune", 1, 2)]
    head_lr = {m.phase: m.learning_rate for m in first.epochs}
    assert head_lr["head"] == pytest.approx(0.003) and head_lr["finetune"] == pytest.approx(1e-4)
    # percent covers both phases: the fine-tuning's first epoch ends two thirds of the way
    assert [p.percent for p in first.progresses if p.phase == "finetune"][-1] == pytest.approx(200 / 3)

    second = RecordingReporter()
    result = train(cfg, small_data, tmp_path / "work", second, progress_interval_s=0)
    assert result.resumed_from == ("finetune", 1)
    assert [(m.phase, m.epoch) for m in second.epochs] == [("finetune", 2)]
    assert [(e["phase"], e["epoch"]) for e in result.history] == [("head", 1), ("finetune", 1), ("finetune", 2)]

    base = result.model.get_layer("base")
    layers = [layer for layer in base.layers if layer.weights]
    top = set(base.layers[-TOP:])
    for trained_layer, file_layer in zip(layers, [layer for layer in file_base.layers if layer.weights]):
        same = all(np.array_equal(a, b) for a, b in zip(trained_layer.get_weights(), file_layer.get_weights()))
        tuned = trained_layer in top and trained_layer.__class__.__name__ != "BatchNormalization"
        assert same != tuned, f"{trained_layer.name}: {'unchanged' if same else 'changed'}"
    assert any(layer in top and layer.weights for layer in layers)
