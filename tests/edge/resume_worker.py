"""Run by test_edge_resume in a subprocess: train, and hang at the start of epoch 2 until killed.

    python resume_worker.py DATA_DIR WORKDIR MARKER
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from edge_support import CLASSES, RESUME_CONFIG, RecordingReporter
from edge_node.dataset import Dataset
from edge_node.trainer import train


def main(data: str, workdir: str, marker: str) -> int:
    def hang_in_epoch_2(p: object) -> None:
        if getattr(p, "epoch") == 2:
            Path(marker).write_text("epoch 2 started")
            threading.Event().wait(120)  # the test kills us (SIGKILL) meanwhile

    train(RESUME_CONFIG, Dataset.from_folder(data, CLASSES), workdir, RecordingReporter(hang_in_epoch_2),
          progress_interval_s=0)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
