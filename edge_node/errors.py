"""What the edge's training core raises; each message says precisely what is wrong.

    TrainingError                 base of everything below
    ├── InvalidTrainingConfig     found before training starts: the task is REJECTED with str(exc)
    ├── CacheError                a sample that does not match its sha256, an unreadable cache
    ├── TrainingCanceled          the cancel event was set; raised within one batch
    └── TrainingDiverged          the loss became NaN or infinite
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base of the training core's errors."""


class InvalidTrainingConfig(TrainingError, ValueError):
    """The configuration does not fit the data, the architecture or the weights given."""


class CacheError(TrainingError):
    """The local dataset cache refused a sample or cannot be read."""


class TrainingCanceled(TrainingError):
    """Training stopped because the task was canceled."""

    def __init__(self, phase: str, epoch: int, batch: int) -> None:
        super().__init__(f"canceled in phase {phase}, epoch {epoch}, batch {batch}")
        self.phase, self.epoch, self.batch = phase, epoch, batch


class TrainingDiverged(TrainingError):
    """The training loss is no longer a finite number."""
