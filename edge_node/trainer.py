"""Train a model from a TrainingConfig on the line's data: checks, phases, callbacks, resume, cancel.

    splits = validate(config, dataset, start_from=None)    # InvalidTrainingConfig: REJECT the task
    result = train(config, dataset, workdir, reporter, cancel_event, task="t-42")
    result.model, result.evaluation, result.history, result.resumed_from

Phases: ``head`` runs ``config.epochs`` epochs at ``config.learning_rate``; with fine-tuning
the base is frozen there, and a ``finetune`` phase follows: the top N layers of the base
unfrozen (BatchNormalization kept frozen) at ``fine_tune.learning_rate`` for
``fine_tune.epochs``. Early stopping and the learning-rate schedule act within a phase.

With ``callbacks.checkpoint`` on, every epoch is checkpointed in ``workdir``; calling train
again with the same workdir, config and data resumes after the last completed epoch, with
the optimizer's state (and does no training at all when it had finished).

train() seeds Python's, NumPy's and TensorFlow's global generators with ``generators.seed``
(the edge trains one task at a time).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras

from edge_node import architectures
from edge_node.checkpoints import CheckpointStore, EpochCheckpoint, RestoreMonitors
from edge_node.dataset import Dataset, Splits, check_data, class_weights
from edge_node.errors import InvalidTrainingConfig, TrainingCanceled
from edge_node.evaluation import Evaluation, evaluate_model
from edge_node.pipeline import batches, build_dataset
from edge_node.progress import NullReporter, ProgressCallback, Reporter
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

PIPELINE_VERSION = 1  # part of the resume fingerprint: bump when preprocessing changes


@dataclass
class TrainResult:
    model: keras.Model
    splits: Splits
    snapshot: str
    history: list[dict[str, Any]]
    evaluation: Evaluation | None
    resumed_from: tuple[str, int] | None     # (phase, epochs completed) found in the workdir
    stopped_early: list[str] = field(default_factory=list)
    fit_s: float = 0.0                        # seconds spent in model.fit
    fit_cpu_s: float = 0.0                    # CPU seconds of this process (all threads) in model.fit
    images_trained: int = 0                   # images seen by model.fit in this call

    @property
    def images_per_s(self) -> float:
        return self.images_trained / self.fit_s if self.fit_s > 0 else 0.0


class CancelCallback(keras.callbacks.Callback):
    """Stops training at the next batch (training or validation) once ``event`` is set."""

    def __init__(self, event: threading.Event, phase: str) -> None:
        super().__init__()
        self.event, self.phase, self._epoch = event, phase, 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch
        self._check(0)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.event.is_set():
            self._check(batch)

    def on_test_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.event.is_set():
            self._check(batch)

    def _check(self, batch: int) -> None:
        if self.event.is_set():
            self.model.stop_training = True
            raise TrainingCanceled(self.phase, self._epoch + 1, batch + 1)


def validate(config: TrainingConfig, dataset: Dataset, start_from: str | Path | None = None) -> Splits:
    """The checks that can be made before training; InvalidTrainingConfig with a precise reason.

    A weights file that does not fit is found when the model is built: train() raises the
    same InvalidTrainingConfig then, before any epoch.
    """
    architectures.check_input_size(config)
    pre = config.pretrained
    if pre.source in ("deployed", "base_model") and start_from is None:
        raise InvalidTrainingConfig(architectures.missing_start(pre.source))
    if pre.source == "file" and not Path(pre.path or "").is_file():
        raise InvalidTrainingConfig(f"weights file {pre.path} not found")
    return check_data(config, dataset, architectures.min_input_size(config.architecture))


def fingerprint(config: TrainingConfig, snapshot: str) -> str:
    text = f"{PIPELINE_VERSION}\n{snapshot}\n{config.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()


def make_optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(lr)
    return keras.optimizers.Adam(lr)


def _schedule_callbacks(config: TrainingConfig, lr: float, epochs: int) -> list[keras.callbacks.Callback]:
    cfg = config.callbacks.learning_rate
    if cfg.schedule == "cosine":
        def cosine(epoch: int, _lr: float) -> float:
            return cfg.min_lr + (lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * epoch / max(1, epochs)))
        return [keras.callbacks.LearningRateScheduler(cosine)]
    if cfg.schedule == "step":
        def step(epoch: int, _lr: float) -> float:
            return max(cfg.min_lr, lr * cfg.factor ** (epoch // cfg.step_epochs))
        return [keras.callbacks.LearningRateScheduler(step)]
    return []


def _monitor_callbacks(config: TrainingConfig) -> list[keras.callbacks.Callback]:
    cbs: list[keras.callbacks.Callback] = []
    es = config.callbacks.early_stopping
    if es.enabled:
        cbs.append(keras.callbacks.EarlyStopping(monitor=es.monitor, patience=es.patience, restore_best_weights=True))
    lr = config.callbacks.learning_rate
    if lr.schedule == "reduce_on_plateau":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=lr.factor, patience=lr.patience,
                                                     min_lr=lr.min_lr))
    return cbs


def _phase_callbacks(config: TrainingConfig, phase: str, lr: float, epochs: int, cancel: threading.Event,
                     progress: ProgressCallback, store: CheckpointStore,
                     history: list[dict[str, Any]]) -> list[keras.callbacks.Callback]:
    """In this order: cancel first (it may raise), the schedule sets the rate before progress reads it,
    progress reports the rate an epoch used before the plateau cuts it, the checkpoint saves last."""
    monitors = _monitor_callbacks(config)
    past = [e for e in history if e.get("phase") == phase]
    return [
        CancelCallback(cancel, phase),
        *_schedule_callbacks(config, lr, epochs),
        progress,
        *monitors,
        *([RestoreMonitors(monitors, past)] if past and monitors else []),
        EpochCheckpoint(store if config.callbacks.checkpoint else None, phase, history),
    ]


def train(config: TrainingConfig, dataset: Dataset, workdir: str | Path, reporter: Reporter | None = None,
          cancel_event: threading.Event | None = None, resume: bool = True, *, task: str = "",
          start_from: str | Path | None = None, progress_interval_s: float = 0.5) -> TrainResult:
    """Check, train (resuming from ``workdir`` when possible), evaluate on the test split."""
    splits = validate(config, dataset, start_from)
    keras.utils.set_random_seed(config.generators.seed)  # the same task trains the same model
    snapshot = dataset.snapshot_id(config.classes)
    reporter = reporter or NullReporter()
    cancel_event = cancel_event or threading.Event()
    store = CheckpointStore(workdir, fingerprint(config, snapshot))
    state = store.load() if resume and config.callbacks.checkpoint else None
    phases: list[tuple[str, int, float]] = [("head", config.epochs, config.learning_rate)]
    if config.fine_tune.enabled:
        phases.append(("finetune", config.fine_tune.epochs, config.fine_tune.learning_rate))

    if state is not None:
        log.info("resuming from %s: phase %s, %s epoch(s) done", store.checkpoint_path(), state.phase, state.epoch)
        model = keras.models.load_model(store.checkpoint_path())
        resumed_from: tuple[str, int] | None = (state.phase, state.epoch)
        history = list(state.history)
    else:
        store.clear()
        model = architectures.build_model(config, start_from)
        resumed_from, history = None, []

    train_ds = build_dataset(splits.train, config, training=True)
    val_ds = build_dataset(splits.validation, config, training=False)
    weights = class_weights(config, splits.train)
    steps = batches(len(splits.train), config.generators.batch_size)
    total = steps * sum(p[1] for p in phases)
    result = TrainResult(model, splits, snapshot, history, None, resumed_from)
    start = [p[0] for p in phases].index(state.phase) if state is not None else 0
    for i in range(start, len(phases)):
        phase, epochs, lr = phases[i]
        done = 0
        if state is not None and i == start:
            if state.complete:
                continue
            done = state.epoch  # the loaded model is compiled, with its optimizer's state
        else:
            architectures.set_phase(model, phase, config)
            model.compile(optimizer=make_optimizer(config.optimizer, lr), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
        if done >= epochs:  # killed after the last epoch's checkpoint, before the phase was marked done
            continue
        progress = ProgressCallback(reporter, task=task, phase=phase, epochs=epochs,  # type: ignore[arg-type]
                                    samples=len(splits.train), batch_size=config.generators.batch_size,
                                    batches_before=steps * sum(p[1] for p in phases[:i]), batches_total=total,
                                    min_interval_s=progress_interval_s)
        before, t0, cpu0 = len(history), time.monotonic(), time.process_time()
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=done, class_weight=weights,
                  callbacks=_phase_callbacks(config, phase, lr, epochs, cancel_event, progress, store, history),
                  verbose=0, shuffle=False)
        result.fit_s += time.monotonic() - t0
        result.fit_cpu_s += time.process_time() - cpu0
        ran = len(history) - before
        result.images_trained += ran * len(splits.train)
        if done + ran < epochs:
            result.stopped_early.append(phase)
            log.info("phase %s stopped early after %s of %s epochs", phase, done + ran, epochs)
        if config.callbacks.checkpoint:
            store.save(model, phase, done + ran, complete=True)
    result.evaluation = evaluate_model(model, splits.test, config) if splits.test else None
    return result
