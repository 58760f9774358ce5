"""Kill -9 during training, restart with the same workdir: training resumes after the last epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras

from edge_support import RESUME_CONFIG, TF_WARNINGS, RecordingReporter, config
from edge_node.checkpoints import CheckpointStore, RestoreMonitors
from edge_node.dataset import Dataset
from edge_node.pipeline import batches
from edge_node.trainer import train

pytestmark = TF_WARNINGS
WORKER = Path(__file__).with_name("resume_worker.py")


def test_killed_training_resumes_at_the_next_epoch(small_data: Dataset, data_root: Path, tmp_path: Path) -> None:
    workdir, marker = tmp_path / "work", tmp_path / "marker"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, str(WORKER), str(data_root), str(workdir), str(marker)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, f"worker exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "epoch 2 never started"
            time.sleep(0.05)
        state = json.loads((workdir / "state.json").read_text())
        assert (state["phase"], state["epoch"], state["complete"]) == ("head", 1, False)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    reporter = RecordingReporter()
    result = train(RESUME_CONFIG, Dataset.from_folder(data_root, small_data.known_classes), workdir, reporter,
                   progress_interval_s=0)
    assert result.resumed_from == ("head", 1)
    assert reporter.progresses[0].epoch == 2 and reporter.progresses[0].batch == 1  # not epoch 1 again
    assert [m.epoch for m in reporter.epochs] == [2, 3]
    assert [e["epoch"] for e in result.history] == [1, 2, 3]
    steps = batches(len(result.splits.train), 8)
    assert int(result.model.optimizer.iterations) == 3 * steps  # the optimizer's state came back too
    assert result.images_trained == 2 * len(result.splits.train)


def test_a_state_of_another_training_is_ignored(tmp_path: Path) -> None:
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="adam", loss="mse")
    store = CheckpointStore(tmp_path, "fingerprint-a")
    store.save(model, "head", 1, entry={"phase": "head", "epoch": 1, "loss": 0.5})
    assert CheckpointStore(tmp_path, "fingerprint-a").load().epoch == 1
    assert CheckpointStore(tmp_path, "fingerprint-b").load() is None
    (tmp_path / "state.json").write_text("{not json")
    assert CheckpointStore(tmp_path, "fingerprint-a").load() is None
    assert config().model_dump() != RESUME_CONFIG.model_dump()


def test_a_state_whose_checkpoint_is_gone_is_ignored(tmp_path: Path) -> None:
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    store = CheckpointStore(tmp_path, "f")
    store.save(model, "head", 2)
    store.checkpoint_path().unlink()
    assert CheckpointStore(tmp_path, "f").load() is None


def test_resumed_early_stopping_and_plateau_keep_their_counts() -> None:
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    es = keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", patience=2)
    acc = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3)
    past = [{"val_loss": v, "val_accuracy": a} for v, a in [(1.0, 0.5), (0.8, 0.7), (0.9, 0.6), (0.95, 0.7)]]
    restore = RestoreMonitors([es, plateau, acc], past)
    for cb in (es, plateau, acc, restore):
        cb.set_model(model)
        cb.on_train_begin()
    assert (es.best, es.best_epoch, es.wait, es.best_weights) == (0.8, 1, 2, None)
    assert (plateau.best, plateau.wait) == (0.8, 0)  # two epochs without progress: the rate was cut, count reset
    assert (acc.best, acc.best_epoch, acc.wait) == (0.7, 1, 2)  # accuracy is maximised; equal is no progress
