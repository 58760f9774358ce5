"""Fixtures of the edge tests: simulator data sets shared by a module."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_support import CLASSES, sim_dataset
from edge_node.dataset import Dataset


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """20 images per class of good / scratch / spot, 32x32: for pipeline, progress and cancel tests."""
    return sim_dataset(tmp_path_factory.mktemp("small"), CLASSES, 20, known=CLASSES + ["dent", "crack"])


@pytest.fixture(scope="session")
def train_data(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """40 images per class, 32x32: enough for small_cnn to beat chance in a few epochs."""
    return sim_dataset(tmp_path_factory.mktemp("train"), CLASSES, 40)


@pytest.fixture
def data_root(small_data: Dataset) -> Path:
    return small_data.samples[0].path.parent.parent
