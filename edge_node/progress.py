"""Progress of a training, reported from inside Keras at the start of each batch, as the paper does.

    class MyReporter:                       # the bus wiring publishes these as bus messages
        def progress(self, p: TrainingProgress) -> None: ...
        def epoch(self, m: EpochMetrics) -> None: ...

    model.fit(..., callbacks=[ProgressCallback(reporter, task="t-1", epochs=5, samples=800, batch_size=16)])

``progress`` is called at the start of a batch at most every ``min_interval_s`` seconds, and
always at the first and the last batch of an epoch, plus once at the end of each epoch
(``batch == batches``); ``epoch`` once after each epoch. Both run on the training thread:
a reporter must return quickly (hand the message to the network, never wait on it).
Per batch, the callback costs a clock read and a comparison; the running metrics are read
from the model only when a message is due. It overrides no batch-end hook, so Keras keeps
converting each batch's logs off the training thread (its CallbackList async dispatch).
A reporter that raises is logged, never allowed to stop training.

In a message: ``epoch`` and ``batch`` count from 1 within the phase (``head``, then
``finetune``); ``percent`` and ``eta_s`` cover the whole training, all phases; accuracy
and loss are the running means of the epoch so far, as Keras logs them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import keras

from fabbus.messages import EpochMetrics, TrainingProgress

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def progress(self, progress: TrainingProgress) -> None: ...

    def epoch(self, metrics: EpochMetrics) -> None: ...


class NullReporter:
    def progress(self, progress: TrainingProgress) -> None:
        pass

    def epoch(self, metrics: EpochMetrics) -> None:
        pass


def _num(value: Any) -> float | None:
    """A finite float from a log value (float, numpy or tensor scalar), else None."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class ProgressCallback(keras.callbacks.Callback):
    """Reports TrainingProgress at batch starts (rate-bounded) and EpochMetrics after each epoch."""

    def __init__(self, reporter: Reporter, *, epochs: int, samples: int, batch_size: int, task: str = "",
                 phase: Literal["head", "finetune"] = "head", batches_before: int = 0,
                 batches_total: int | None = None, min_interval_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.reporter, self.task, self.phase = reporter, task, phase
        self.epochs, self.samples, self.batch_size = epochs, samples, batch_size
        self.steps = max(1, math.ceil(samples / batch_size))
        self.batches_before = batches_before
        self.batches_total = batches_total or self.steps * epochs
        self.min_interval_s, self.clock = min_interval_s, clock
        self._epoch = 0
        self._next = 0.0
        self._t_run: float | None = None
        self._done_at_run_start = 0
        self._t_epoch = 0.0
        self._t_train_end: float | None = None
        self._failures = 0

    # ---- Keras hooks: keep the per-batch ones tiny

    def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        self._epoch, self._t_train_end = epoch, None
        self._t_epoch = self.clock()

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._t_train_end is None:
            self._t_train_end = self.clock()

    def on_train_batch_begin(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        now = self.clock()
        if now >= self._next or batch == 0 or batch == self.steps - 1:
            self._emit(batch, now)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        now = self.clock()
        logs = logs or {}
        self._emit(self.steps, now, logs)
        loss, accuracy = _num(logs.get("loss")), _num(logs.get("accuracy"))
        if loss is None or accuracy is None:
            log.warning("epoch %s of phase %s: loss %s, accuracy %s are not finite; no metrics reported",
                        epoch + 1, self.phase, logs.get("loss"), logs.get("accuracy"))
            return
        self._call(self.reporter.epoch, EpochMetrics(
            task=self.task, phase=self.phase, epoch=epoch + 1, epochs=self.epochs, loss=loss, accuracy=accuracy,
            val_loss=_num(logs.get("val_loss")), val_accuracy=_num(logs.get("val_accuracy")),
            learning_rate=self._learning_rate(), duration_s=max(0.0, now - self._t_epoch)))

    # ---- the message

    def _emit(self, batch: int, now: float, logs: Mapping[str, Any] | None = None) -> None:
        self._next = now + self.min_interval_s
        done = self.batches_before + self._epoch * self.steps + batch  # batches finished, all phases
        if self._t_run is None:
            self._t_run, self._done_at_run_start = now, done
        ran, elapsed = done - self._done_at_run_start, now - self._t_run
        eta = (self.batches_total - done) * elapsed / ran if ran > 0 and elapsed > 0 else None
        if batch == self.steps:  # the epoch's end: its training batches ended where validation began
            images, span = self.samples, (self._t_train_end or now) - self._t_epoch
        else:
            images, span = batch * self.batch_size, now - self._t_epoch
        if logs is None:
            logs = self._running_metrics(batch)
        self._call(self.reporter.progress, TrainingProgress(
            task=self.task, phase=self.phase, epoch=self._epoch + 1, epochs=self.epochs,
            batch=min(batch + 1, self.steps), batches=self.steps,
            percent=min(100.0, 100.0 * done / self.batches_total) if self.batches_total else 0.0,
            accuracy=_num(logs.get("accuracy")), loss=_num(logs.get("loss")),
            learning_rate=self._learning_rate(), eta_s=max(0.0, eta) if eta is not None else None,
            images_per_s=images / span if images and span > 0 else None))

    def _running_metrics(self, batch: int) -> Mapping[str, Any]:
        """The epoch's running loss and accuracy after ``batch`` batches (what Keras would log)."""
        if batch == 0 or self.model is None:
            return {}
        return self.model.get_metrics_result()

    def _learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        return _num(getattr(optimizer, "learning_rate", None)) if optimizer is not None else None

    def _call(self, fn: Callable[[Any], None], message: Any) -> None:
        try:
            fn(message)
        except Exception:  # a boundary: the reporter is the bus's code
            self._failures += 1
            if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                log.exception("progress reporter failed (%s times so far); training goes on", self._failures)
