"""Real training on simulator images: learning, progress, cancel, bad configs, export, incremental training."""

from __future__ import annotations

import threading
from pathlib import Path

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from edge_support import CLASSES, TF_WARNINGS, RecordingReporter, config
from edge_node.architectures import build_base, build_model
from edge_node.dataset import Dataset
from edge_node.errors import InvalidTrainingConfig, TrainingCanceled
from edge_node.export import export_model
from edge_node.pipeline import batches, build_dataset
from edge_node.trainer import TrainResult, train
from fabbus.model_bundle import read_bundle
from fabbus.training_config import TrainingConfig

pytestmark = TF_WARNINGS


@pytest.fixture(scope="module")
def trained(train_data: Dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, TrainingConfig,
                                                                                     Path, RecordingReporter]:
    cfg = config(epochs=8, generators={"batch_size": 8, "validation_split": 0.2, "test_split": 0.2, "seed": 1},
                 callbacks={"learning_rate": {"schedule": "cosine"}})
    workdir = tmp_path_factory.mktemp("work")
    reporter = RecordingReporter()
    return train(cfg, train_data, workdir, reporter, task="t-1"), cfg, workdir, reporter


def test_small_cnn_learns_better_than_chance(trained: tuple[TrainResult, TrainingConfig, Path, RecordingReporter]
                                             ) -> None:
    result, cfg, workdir, reporter = trained
    ev = result.evaluation
    assert ev is not None and ev.samples == 24 and ev.classes == CLASSES
    assert ev.accuracy > 0.6, ev  # chance is 1/3
    assert sum(map(sum, ev.confusion_matrix)) == 24
    assert [e["epoch"] for e in result.history] == list(range(1, 9)) and result.resumed_from is None
    assert result.images_trained == 8 * len(result.splits.train) and result.images_per_s > 0
    # progress: every epoch's first batch, rate-bounded in between, percent up to 100; cosine schedule decays
    steps = batches(len(result.splits.train), 8)
    assert {(p.epoch, p.batch) for p in reporter.progresses} >= {(e, 1) for e in range(1, 9)} | {(8, steps)}
    assert reporter.progresses[-1].percent == 100.0
    lrs = [m.learning_rate for m in reporter.epochs]
    assert lrs[0] == pytest.approx(0.003) and lrs == sorted(lrs, reverse=True)
    assert (workdir / "state.json").is_file()
    assert [p.name for p in workdir.glob("ckpt-*")] == ["ckpt-head-0008-end.keras"]


def test_a_finished_training_is_not_run_again(trained: tuple[TrainResult, TrainingConfig, Path, RecordingReporter],
                                              train_data: Dataset) -> None:
    result, cfg, workdir, _ = trained
    reporter = RecordingReporter()
    again = train(cfg, train_data, workdir, reporter)
    assert again.resumed_from == ("head", 8) and again.images_trained == 0 and not reporter.progresses
    assert again.evaluation is not None and again.evaluation.accuracy == result.evaluation.accuracy


def test_export_runs_in_litert_and_matches_keras(trained: tuple[TrainResult, TrainingConfig, Path, RecordingReporter],
                                                 tmp_path: Path) -> None:
    result, cfg, _, _ = trained
    exported = export_model(result.model, cfg, tmp_path / "out", brand="acme", evaluation=result.evaluation,
                            history=result.history)
    assert exported.size == exported.path.stat().st_size and len(exported.sha256) == 64
    bundle = read_bundle(exported.path)
    meta = bundle.meta
    assert meta.classes == CLASSES and meta.input_shape == (32, 32, 3) and meta.architecture == "small_cnn"
    assert meta.color_mode == "rgb" and meta.normalization == "rescale" and bundle.has_keras
    assert meta.metrics["confusion_matrix"] == result.evaluation.confusion_matrix
    assert meta.metrics["test_accuracy"] == result.evaluation.accuracy and "val_accuracy" in meta.metrics

    interpreter = Interpreter(model_content=bundle.tflite)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"]) == [1, 32, 32, 3] and list(out["shape"]) == [1, 3]
    x, _ = next(iter(build_dataset(result.splits.test[:4], cfg, training=False)))
    expected = result.model(x, training=False).numpy()
    for i in range(4):
        interpreter.set_tensor(inp["index"], x[i:i + 1].numpy())
        interpreter.invoke()
        got = interpreter.get_tensor(out["index"])
        assert got.shape == (1, 3) and got.sum() == pytest.approx(1.0, abs=1e-4)
        np.testing.assert_allclose(got[0], expected[i], atol=1e-4)

    # incremental training: the deployed bundle's base and head are the new model's starting point
    incremental = config(pretrained={"source": "deployed"})
    model = build_model(incremental, start_from=exported.path)
    for name in ("base", "predictions"):
        for a, b in zip(model.get_layer(name).get_weights(), result.model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # other classes: the base is reused, the head is new
    other = build_model(config(classes=["good", "spot"], pretrained={"source": "deployed"}), start_from=exported.path)
    np.testing.assert_array_equal(other.get_layer("base").get_weights()[0],
                                  result.model.get_layer("base").get_weights()[0])
    assert other.get_layer("predictions").get_weights()[0].shape == (64, 2)
    # a deployed model of another architecture, a damaged bundle: refused with the reason
    with pytest.raises(InvalidTrainingConfig, match=rf"pretrained model {exported.path} is a small_cnn, the "
                                                    r"training config asks for mobilenet_v2"):
        build_model(config(architecture="mobilenet_v2", pretrained={"source": "deployed"}), start_from=exported.path)
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(exported.path.read_bytes()[:1000])
    with pytest.raises(InvalidTrainingConfig, match=rf"pretrained model: {damaged}: truncated zip archive"):
        build_model(incremental, start_from=damaged)


def test_cancel_stops_within_one_batch(small_data: Dataset, tmp_path: Path) -> None:
    cancel = threading.Event()

    def on_progress(p: object) -> None:
        if getattr(p, "batch") == 3:
            cancel.set()

    reporter = RecordingReporter(on_progress)
    with pytest.raises(TrainingCanceled) as exc:
        train(config(epochs=3), small_data, tmp_path, reporter, cancel, progress_interval_s=0)
    # set at the start of batch 3: batch 3 runs, batch 4 never starts
    assert (exc.value.phase, exc.value.epoch, exc.value.batch) == ("head", 1, 4)
    assert [p.batch for p in reporter.progresses] == [1, 2, 3] and not reporter.epochs


def test_bad_pretrained_weights_are_refused_precisely(small_data: Dataset, tmp_path: Path) -> None:
    gray = build_base(config(preprocessing={"color_mode": "grayscale"}))
    weights = tmp_path / "gray.weights.h5"
    gray.save_weights(weights)
    cfg = config(pretrained={"source": "file", "path": str(weights)})
    with pytest.raises(InvalidTrainingConfig, match=rf"weights file {weights} does not fit architecture "
                                                    r"small_cnn \(input \[32, 32, 3\]\): .*shape"):
        train(cfg, small_data, tmp_path / "w1")
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InvalidTrainingConfig, match=rf"weights file {junk} does not fit architecture small_cnn"):
        train(config(pretrained={"source": "file", "path": str(junk)}), small_data, tmp_path / "w2")
    with pytest.raises(InvalidTrainingConfig, match=r"weights file /nowhere.weights.h5 not found"):
        train(config(pretrained={"source": "file", "path": "/nowhere.weights.h5"}), small_data, tmp_path / "w3")
    with pytest.raises(InvalidTrainingConfig, match="source is 'deployed' but the line has no deployed model"):
        train(config(pretrained={"source": "deployed"}), small_data, tmp_path / "w4")
    # a weights file that fits is loaded as it is
    rgb = build_base(config())
    good = tmp_path / "rgb.weights.h5"
    rgb.save_weights(good)
    model = build_model(cfg.model_copy(update={"pretrained": cfg.pretrained.model_copy(update={"path": str(good)})}))
    np.testing.assert_array_equal(model.get_layer("base").get_weights()[0], rgb.get_weights()[0])
    assert isinstance(model, keras.Model)


def test_early_stopping_plateau_and_balanced_weights(small_data: Dataset, tmp_path: Path) -> None:
    # a learning rate so small that nothing improves: the plateau halves it after epoch 2, early stopping stops there
    cfg = config(epochs=6, learning_rate=1e-7,
                 generators={"batch_size": 8, "validation_split": 0.2, "test_split": 0.0, "class_weights": "balanced"},
                 callbacks={"early_stopping": {"enabled": True, "monitor": "val_accuracy", "patience": 1},
                            "learning_rate": {"schedule": "reduce_on_plateau", "patience": 1, "factor": 0.5,
                                              "min_lr": 0}})
    reporter = RecordingReporter()
    result = train(cfg, small_data, tmp_path, reporter)
    assert result.stopped_early == ["head"] and [e["epoch"] for e in result.history] == [1, 2]
    assert [m.learning_rate for m in reporter.epochs] == pytest.approx([1e-7, 1e-7])  # the rate each epoch used
    assert float(result.model.optimizer.learning_rate) == pytest.approx(5e-8)
    assert result.evaluation is None  # no test split


def test_learning_rate_schedules() -> None:
    from edge_node.trainer import _schedule_callbacks

    cosine = _schedule_callbacks(config(callbacks={"learning_rate": {"schedule": "cosine", "min_lr": 0}}), 0.1, 4)[0]
    assert [cosine.schedule(e, 0.0) for e in range(4)] == pytest.approx([0.1, 0.0853553, 0.05, 0.0146447], rel=1e-5)
    step = _schedule_callbacks(config(callbacks={"learning_rate": {"schedule": "step", "step_epochs": 2,
                                                                   "factor": 0.5}}), 0.1, 6)[0]
    assert [step.schedule(e, 0.0) for e in range(6)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert _schedule_callbacks(config(), 0.1, 4) == []


def test_architectures_and_their_minimum_input() -> None:
    from edge_node.architectures import check_input_size

    model = build_model(config(architecture="efficientnet_b0", preprocessing={"color_mode": "grayscale"}))
    assert model.input_shape == (None, 32, 32, 1) and model.output_shape == (None, 3)
    tiny = config(architecture="mobilenet_v2", alpha=0.35).model_copy(update={"input_size": 16})
    with pytest.raises(InvalidTrainingConfig, match="input_size 16 is below the minimum 32 of architecture "
                                                    "mobilenet_v2"):
        check_input_size(tiny)
