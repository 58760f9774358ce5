"""Epoch checkpoints in a task's workdir, so that a killed training resumes where it stopped.

    <workdir>/state.json               {"fingerprint", "phase", "epoch", "complete", "checkpoint", "history"}
    <workdir>/ckpt-<phase>-<epoch>.keras   the full model (weights and optimizer state) after that epoch

After each epoch the model is saved under a new name and fsynced; then state.json is
replaced atomically (temp file, fsync, rename); then older checkpoints are removed. So
state.json always names a complete checkpoint, whenever the process is killed. A state
whose fingerprint (config and data snapshot) differs from the new task's is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras

from edge_node.errors import TrainingDiverged
from fabbus.model_bundle import fsync_dir

log = logging.getLogger(__name__)

STATE = "state.json"
STATE_VERSION = 1


@dataclass
class TrainState:
    fingerprint: str
    phase: str = "head"
    epoch: int = 0                      # epochs completed in ``phase``
    complete: bool = False              # ``phase`` finished (all epochs or stopped early)
    checkpoint: str | None = None       # file name in the workdir
    history: list[dict[str, Any]] = field(default_factory=list)
    version: int = STATE_VERSION


class CheckpointStore:
    def __init__(self, workdir: str | os.PathLike[str], fingerprint: str) -> None:
        self.workdir = Path(workdir)
        self.fingerprint = fingerprint
        self.state = TrainState(fingerprint)

    def load(self) -> TrainState | None:
        """The saved state of this same training, or None (nothing saved, another config, unreadable)."""
        path = self.workdir / STATE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            state = TrainState(**raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None
        if state.version != STATE_VERSION or state.fingerprint != self.fingerprint:
            log.info("ignoring %s: it belongs to another training configuration or data snapshot", path)
            return None
        if not state.checkpoint or not (self.workdir / state.checkpoint).is_file():
            log.warning("ignoring %s: its checkpoint %s is missing", path, state.checkpoint)
            return None
        self.state = state
        return state

    def checkpoint_path(self) -> Path:
        assert self.state.checkpoint is not None
        return self.workdir / self.state.checkpoint

    def clear(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / STATE).unlink(missing_ok=True)
        for old in self.workdir.glob("ckpt-*.keras"):
            old.unlink()
        self.state = TrainState(self.fingerprint)

    def save(self, model: keras.Model, phase: str, epoch: int, *, complete: bool = False,
             entry: dict[str, Any] | None = None) -> None:
        """Checkpoint the model after ``epoch`` of ``phase`` (and record the epoch's logs)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = f"ckpt-{phase}-{epoch:04d}{'-end' if complete else ''}.keras"
        path = self.workdir / name
        model.save(path)
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        history = self.state.history + ([entry] if entry else [])
        self.state = TrainState(self.fingerprint, phase, epoch, complete, name, history)
        tmp = self.workdir / f".{STATE}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self.state), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.workdir / STATE)
        fsync_dir(self.workdir)
        for old in self.workdir.glob("ckpt-*.keras"):
            if old.name != name:
                old.unlink()
        log.debug("checkpoint %s written", path)


class EpochCheckpoint(keras.callbacks.Callback):
    """Records each epoch's logs; checkpoints the model when a store is given; stops on a NaN loss."""

    def __init__(self, store: CheckpointStore | None, phase: str, history: list[dict[str, Any]]) -> None:
        super().__init__()
        self.store, self.phase, self.history = store, phase, history

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        entry: dict[str, Any] = {"phase": self.phase, "epoch": epoch + 1}
        for key, value in (logs or {}).items():
            entry[key] = float(value)
        loss = entry.get("loss")
        if loss is None or not math.isfinite(loss):
            self.model.stop_training = True
            raise TrainingDiverged(f"the training loss is {loss} after epoch {epoch + 1} of phase {self.phase}: "
                                   "lower the learning rate or check the data")
        self.history.append(entry)
        if self.store is not None:
            self.store.save(self.model, self.phase, epoch + 1, entry=entry)


class RestoreMonitors(keras.callbacks.Callback):
    """On a resumed fit, give EarlyStopping / ReduceLROnPlateau the state they had before the kill.

    Place it after them: their on_train_begin resets what this one then restores, by replaying
    their rules over the monitored values of the epochs already done in this phase.
    """

    def __init__(self, callbacks: list[keras.callbacks.Callback], past: list[dict[str, Any]]) -> None:
        super().__init__()
        self.targets, self.past = callbacks, past

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        for cb in self.targets:
            values = [e.get(cb.monitor) for e in self.past]
            if any(v is None for v in values) or not values:
                continue
            maximize = "acc" in cb.monitor
            delta = abs(getattr(cb, "min_delta", 0.0))
            best, best_epoch, wait = None, 0, 0
            for i, v in enumerate(values):
                better = best is None or (v > best + delta if maximize else v < best - delta)
                if isinstance(cb, keras.callbacks.EarlyStopping):
                    wait = 0 if better else wait + 1
                elif not better:
                    wait += 1
                    if wait >= cb.patience:  # the plateau cut the rate then; the optimizer kept it
                        wait = 0
                else:
                    wait = 0
                if better:
                    best, best_epoch = v, i
            cb.best, cb.wait = best, wait
            if isinstance(cb, keras.callbacks.EarlyStopping):
                cb.best_epoch = best_epoch
                if cb.restore_best_weights and best_epoch == len(values) - 1:
                    cb.best_weights = self.model.get_weights()
