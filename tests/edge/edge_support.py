"""Helpers of the edge tests: tiny simulator image sets, a recording reporter, warning filters."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from detector_node.camera_sim import CameraSimulator  # noqa: E402
from edge_node.dataset import Dataset  # noqa: E402
from fabbus.messages import EpochMetrics, TrainingProgress  # noqa: E402
from fabbus.training_config import TrainingConfig  # noqa: E402

# TensorFlow's variables lack numpy 2's __array__(copy=...): Keras' convert_to_numpy warns on save/get_weights.
TF_WARNINGS = [
    pytest.mark.filterwarnings(
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

CLASSES = ["good", "scratch", "spot"]


def write_images(root: Path, classes: Sequence[str], per_class: int, size: int = 32, brand: str = "acme",
                 seed: int = 0) -> Path:
    """``per_class`` simulator images of each class under ``root/<class>/`` (distinct products per class)."""
    cam = CameraSimulator(brand, size=size, seed=seed)
    for k, label in enumerate(classes):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            seq = 1000 * k + i
            Image.fromarray(cam.render(seq, label)).save(folder / f"{seq:05d}.png", compress_level=1)
    return root


def sim_dataset(root: Path, classes: Sequence[str] = CLASSES, per_class: int = 20, size: int = 32,
                known: Sequence[str] | None = None) -> Dataset:
    write_images(root, classes, per_class, size)
    return Dataset.from_folder(root, known_classes=known)


def config(**over: Any) -> TrainingConfig:
    """A small_cnn config for tiny data; keyword arguments override fields."""
    base: dict[str, Any] = {"classes": CLASSES, "input_size": 32, "epochs": 2, "learning_rate": 0.003,
                            "generators": {"batch_size": 8, "validation_split": 0.2, "test_split": 0.2}}
    base.update(over)
    return TrainingConfig.model_validate(base)


class RecordingReporter:
    """Implements edge_node.progress.Reporter; keeps every message, optionally calls a hook on each."""

    def __init__(self, on_progress: Callable[[TrainingProgress], None] | None = None) -> None:
        self.progresses: list[TrainingProgress] = []
        self.epochs: list[EpochMetrics] = []
        self.on_progress = on_progress

    def progress(self, progress: TrainingProgress) -> None:
        self.progresses.append(progress)
        if self.on_progress is not None:
            self.on_progress(progress)

    def epoch(self, metrics: EpochMetrics) -> None:
        self.epochs.append(metrics)


RESUME_CONFIG = config(epochs=3, generators={"batch_size": 8, "validation_split": 0.2, "test_split": 0.0})
