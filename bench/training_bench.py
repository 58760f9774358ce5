"""Edge training with progress reporting vs a plain ``model.fit``, same data and model, one run.

    python -m bench.training_bench [--per-class 200] [--size 32] [--epochs 8] [--repeats 3]

The edge side is ``edge_node.trainer.train`` with a reporter that encodes every
TrainingProgress / EpochMetrics message with ``fabbus.messages.encode``, as the bus will
(checkpoints off, so that only the reporting and the trainer's callbacks differ). The
baseline is ``model.fit`` on the same tf.data pipeline, model and validation data. Runs
alternate (plain, edge, edge reporting every batch; the order rotates) and each figure is
the best over the repeats: other processes only ever slow a run down, so the best is the
closest to the code's own cost. "Steady" is the fastest epoch after each run's first (graph
tracing); "wall" is all epochs of ``fit``; "img/CPU-s" divides by the process's CPU time in
``fit``. Also measured alone: the callback's cost per batch between reports, and the cost of
one report (metrics read, message, encoding).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from PIL import Image  # noqa: E402

from detector_node.camera_sim import CameraSimulator  # noqa: E402
from edge_node.architectures import build_model  # noqa: E402
from edge_node.dataset import Dataset  # noqa: E402
from edge_node.pipeline import build_dataset  # noqa: E402
from edge_node.progress import ProgressCallback  # noqa: E402
from edge_node.trainer import make_optimizer, train, validate  # noqa: E402
from fabbus.messages import EpochMetrics, TrainingProgress, encode  # noqa: E402
from fabbus.training_config import TrainingConfig  # noqa: E402

log = logging.getLogger(__name__)
GOAL_PERCENT = 3.0


class EncodingReporter:
    """Encodes each message as the bus would publish it; counts messages and bytes."""

    def __init__(self) -> None:
        self.messages = self.bytes = 0
        self.durations: list[float] = []

    def progress(self, progress: TrainingProgress) -> None:
        self.bytes += len(encode(progress, sender="site1/line1", correlation_id=progress.task))
        self.messages += 1

    def epoch(self, metrics: EpochMetrics) -> None:
        self.bytes += len(encode(metrics, sender="site1/line1", correlation_id=metrics.task))
        self.messages += 1
        self.durations.append(metrics.duration_s)


@dataclass
class Runs:
    wall: list[float] = field(default_factory=list)     # img/s over each fit
    cpu: list[float] = field(default_factory=list)      # images per CPU second of the process over each fit
    epochs: list[float] = field(default_factory=list)   # seconds of each epoch after the first, all repeats

    def steady(self, n_train: int) -> float:
        return n_train / min(self.epochs)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.durations: list[float] = []
        self._t = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._t = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.durations.append(time.monotonic() - self._t)


def make_data(root: Path, classes: list[str], per_class: int, size: int) -> Dataset:
    cam = CameraSimulator("bench", size=size)
    for k, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(cam.render(1000 * k + i, label)).save(root / label / f"{i:05d}.png", compress_level=1)
    return Dataset.from_folder(root)


def run_plain(config: TrainingConfig, data: Dataset) -> tuple[float, float, list[float], int, keras.Model]:
    splits = validate(config, data)
    keras.utils.set_random_seed(config.generators.seed)
    model = build_model(config)
    model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    train_ds = build_dataset(splits.train, config, training=True)
    val_ds = build_dataset(splits.validation, config, training=False)
    timer = EpochTimer()
    t0, cpu0 = time.monotonic(), time.process_time()
    model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=[timer], verbose=0, shuffle=False)
    return time.monotonic() - t0, time.process_time() - cpu0, timer.durations, len(splits.train), model


def run_edge(config: TrainingConfig, data: Dataset, workdir: Path,
             interval: float) -> tuple[float, float, list[float], int, EncodingReporter]:
    reporter = EncodingReporter()
    result = train(config, data, workdir, reporter, resume=False, task="bench", progress_interval_s=interval)
    return result.fit_s, result.fit_cpu_s, reporter.durations, len(result.splits.train), reporter


def callback_cost_us(n: int = 200_000) -> float:
    cb = ProgressCallback(EncodingReporter(), epochs=1, samples=n + 1, batch_size=1, min_interval_s=3600)
    cb.on_epoch_begin(0)
    cb.on_train_batch_begin(0)
    t0 = time.perf_counter()
    for b in range(1, n):
        cb.on_train_batch_begin(b)
    return (time.perf_counter() - t0) / n * 1e6


def report_cost_us(model: keras.Model, n: int = 2_000) -> float:
    """One progress report on a trained model: read its running metrics and rate, build and encode the message."""
    cb = ProgressCallback(EncodingReporter(), epochs=1, samples=10**6, batch_size=1, min_interval_s=0)
    cb.set_model(model)
    cb.on_epoch_begin(0)
    t0 = time.perf_counter()
    for b in range(1, n + 1):
        cb.on_train_batch_begin(b)
    return (time.perf_counter() - t0) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.training_bench", description=__doc__.splitlines()[0])
    p.add_argument("--classes", default="good,scratch,spot")
    p.add_argument("--per-class", type=int, default=200, help="images per class")
    p.add_argument("--size", type=int, default=32, help="image and input size (px)")
    p.add_argument("--architecture", default="small_cnn", choices=["small_cnn", "mobilenet_v2", "efficientnet_b0"])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--interval", type=float, default=0.5, help="progress interval of the edge run (s)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    classes = [c for c in args.classes.split(",") if c]
    config = TrainingConfig(classes=classes, architecture=args.architecture, input_size=args.size, epochs=args.epochs,
                            generators={"batch_size": args.batch_size, "validation_split": 0.2, "test_split": 0.0},
                            callbacks={"checkpoint": False})
    runs: dict[str, Runs] = {"plain model.fit": Runs(), "edge train()": Runs(), "edge train(), every batch": Runs()}
    traffic: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="training-bench-") as tmp:
        data = make_data(Path(tmp) / "data", classes, args.per_class, args.size)
        run_plain(config.model_copy(update={"epochs": 1}), data)  # warm-up: TensorFlow's one-time start
        names = list(runs)
        for r in range(args.repeats):
            for name in names[r % 3:] + names[:r % 3]:  # rotate, so that no run always goes first
                if name.startswith("plain"):
                    fit_s, cpu_s, durations, n, model = run_plain(config, data)
                else:
                    interval = 0.0 if "every" in name else args.interval
                    fit_s, cpu_s, durations, n, reporter = run_edge(config, data, Path(tmp) / f"work-{r}", interval)
                    traffic[name] = (reporter.messages, reporter.bytes)
                runs[name].wall.append(config.epochs * n / fit_s)
                runs[name].cpu.append(config.epochs * n / cpu_s)
                runs[name].epochs.extend(durations[1:] or durations)
                log.info("repeat %s %s: wall %.0f img/s, epochs %s s", r + 1, name, runs[name].wall[-1],
                         " ".join(f"{d:.3f}" for d in durations))
        steps = -(-n // args.batch_size)
    print(table(runs, traffic, config, n, steps, callback_cost_us(), report_cost_us(model)))
    return 0


def table(runs: dict[str, Runs], traffic: dict[str, tuple[int, int]], config: TrainingConfig,
          n_train: int, steps: int, cb_us: float, report_us: float) -> str:
    plain = runs["plain model.fit"]
    base_wall, base_steady = max(plain.wall), plain.steady(n_train)
    lines = [f"{config.architecture} {config.input_size}x{config.input_size}, {n_train} training images, "
             f"batch {config.generators.batch_size} ({steps} batches/epoch), {config.epochs} epochs x "
             f"{len(plain.wall)} runs each, alternating; best of the runs",
             f"{'run':<27}{'wall img/s':>11}{'overhead':>9}{'steady img/s':>13}{'overhead':>9}"
             f"{'img/CPU-s':>11}{'overhead':>9}{'messages':>9}{'bytes':>8}"]
    base_cpu = max(plain.cpu)
    for name, r in runs.items():
        wall, steady, cpu = max(r.wall), r.steady(n_train), max(r.cpu)
        msgs, nbytes = traffic.get(name, (0, 0))
        lines.append(f"{name:<27}{wall:>11.0f}{100 * (base_wall - wall) / base_wall:>8.1f}%{steady:>13.0f}"
                     f"{100 * (base_steady - steady) / base_steady:>8.1f}%{cpu:>11.0f}"
                     f"{100 * (base_cpu - cpu) / base_cpu:>8.1f}%{msgs:>9}{nbytes:>8}")
    epoch_s = n_train / base_steady
    measured = 100 * (base_steady - runs["edge train()"].steady(n_train)) / base_steady
    noise = 100 * statistics.pstdev(plain.epochs) / statistics.mean(plain.epochs)
    msgs_per_epoch = traffic["edge train()"][0] / config.epochs
    estimate = 100 * (steps * cb_us + msgs_per_epoch * report_us) / (epoch_s * 1e6)
    lines += [f"measured alone: a batch start between reports costs {cb_us:.2f} us, a report (metrics read, message, "
              f"encoding) {report_us:.0f} us; a training batch takes {1000 * epoch_s / steps:.1f} ms",
              f"reporting overhead from those costs: {estimate:.3f}% of an epoch ({msgs_per_epoch:.1f} messages/epoch)",
              f"noise: the plain runs' epochs after the first vary by {noise:.0f}% (standard deviation / mean)",
              f"goal: edge train() under {GOAL_PERCENT:.0f}% overhead: {'met' if estimate < GOAL_PERCENT else 'NOT met'}"
              f" by the measured costs ({estimate:.2f}%); throughput measured {measured:+.1f}%, "
              f"{'within' if abs(measured) <= max(noise, GOAL_PERCENT) else 'BEYOND'} the noise"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
