"""The progress callback: called at the start of batches, rate-bounded, robust, cheap."""

from __future__ import annotations

import time

import keras
import numpy as np
import pytest

from edge_support import TF_WARNINGS, RecordingReporter
from edge_node.progress import ProgressCallback
from fabbus.messages import TrainingProgress, decode, encode

pytestmark = TF_WARNINGS

N, BATCH, EPOCHS = 40, 4, 2
STEPS = N // BATCH


def _model() -> keras.Model:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype("float32")
    return x, (x[:, 0] > 0).astype("int32")


class FakeClock:
    """Advances by ``step`` seconds at every read."""

    def __init__(self, step: float) -> None:
        self.t, self.step = 100.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def test_progress_is_reported_at_the_start_of_every_batch_when_unbounded() -> None:
    model, (x, y) = _model(), _data()
    seen: list[tuple[int, int, int]] = []  # (epoch, batch, optimizer steps done when called)
    reporter = RecordingReporter(lambda p: seen.append((p.epoch, p.batch, int(model.optimizer.iterations))))
    cb = ProgressCallback(reporter, task="t-1", epochs=EPOCHS, samples=N, batch_size=BATCH, min_interval_s=0)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, validation_data=(x, y), callbacks=[cb], verbose=0, shuffle=False)

    # each batch start (batch 1..STEPS), then the epoch's end (batch == batches)
    expected = []
    for e in range(EPOCHS):
        expected += [(e + 1, b + 1, e * STEPS + b) for b in range(STEPS)] + [(e + 1, STEPS, (e + 1) * STEPS)]
    assert seen == expected  # called before each batch's training step: the step count is the batch index
    p = reporter.progresses
    assert [m.percent for m in p] == sorted(m.percent for m in p) and p[-1].percent == 100.0
    assert p[0].loss is None and p[0].accuracy is None and p[0].eta_s is None  # nothing measured yet
    assert p[1].loss is not None and 0 <= p[1].accuracy <= 1 and p[1].learning_rate == pytest.approx(0.1)
    assert p[5].eta_s is not None and p[5].eta_s > 0 and p[5].images_per_s > 0
    assert all(m.task == "t-1" and m.phase == "head" and m.batches == STEPS for m in p)
    assert [(m.epoch, m.epochs) for m in reporter.epochs] == [(1, 2), (2, 2)]
    assert reporter.epochs[0].val_accuracy is not None and reporter.epochs[0].duration_s > 0
    # what the bus will publish: messages encode and decode as they are
    assert decode(encode(p[3], sender="site1/line1")).body == p[3]


def test_progress_is_rate_bounded_but_keeps_first_and_last_batch() -> None:
    model, (x, y) = _model(), _data()
    reporter = RecordingReporter()
    # every clock read advances 0.1 s; at most one report per 0.35 s
    cb = ProgressCallback(reporter, epochs=EPOCHS, samples=N, batch_size=BATCH, min_interval_s=0.35,
                          clock=FakeClock(0.1))
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, callbacks=[cb], verbose=0, shuffle=False)
    per_epoch = [[m.batch for m in reporter.progresses if m.epoch == e] for e in (1, 2)]
    for batches in per_epoch:
        assert batches[0] == 1 and batches[-2:] == [STEPS, STEPS]  # first, last, then the epoch's end
        middle = [b for b in batches[1:-2]]
        assert middle and len(middle) < STEPS // 2  # bounded: not every batch
        assert all(b2 - b1 >= 3 for b1, b2 in zip(batches[:-2], middle))  # >= 0.35 s apart = 4 clock reads

    # a long interval leaves exactly the first batch, the last batch and the epoch's end
    reporter = RecordingReporter()
    cb = ProgressCallback(reporter, epochs=EPOCHS, samples=N, batch_size=BATCH, min_interval_s=3600)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, callbacks=[cb], verbose=0, shuffle=False)
    assert [(m.epoch, m.batch) for m in reporter.progresses] == [(1, 1), (1, STEPS), (1, STEPS),
                                                                 (2, 1), (2, STEPS), (2, STEPS)]


def test_a_failing_reporter_never_stops_training(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def progress(self, progress: TrainingProgress) -> None:
            raise ConnectionError("broker gone")

        def epoch(self, metrics: object) -> None:
            raise ConnectionError("broker gone")

    model, (x, y) = _model(), _data()
    cb = ProgressCallback(Broken(), epochs=1, samples=N, batch_size=BATCH, min_interval_s=0)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[cb], verbose=0)
    assert int(model.optimizer.iterations) == STEPS
    assert "progress reporter failed (1 times so far)" in caplog.text


def test_per_batch_cost_is_tiny() -> None:
    """Between reports, a batch start costs a clock read and a comparison: well under 20 us (a batch takes ms)."""
    cb = ProgressCallback(RecordingReporter(), epochs=1, samples=10**6, batch_size=1, min_interval_s=3600)
    cb.on_epoch_begin(0)
    cb.on_train_batch_begin(0)  # the first batch reports
    n = 20_000
    t0 = time.perf_counter()
    for b in range(1, n + 1):
        cb.on_train_batch_begin(b)
    per_batch = (time.perf_counter() - t0) / n
    assert per_batch < 20e-6, f"{per_batch * 1e6:.2f} us per batch"
    # no batch-end hook: Keras then converts each batch's logs off the training thread
    assert ProgressCallback.on_train_batch_end is keras.callbacks.Callback.on_train_batch_end
