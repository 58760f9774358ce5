"""A training task from start to end: collect, train, evaluate, export, upload.

    details = run_train(services, job, reporter)     # SUCCEEDED with these details; raises otherwise

Each finished step leaves a file in the task's folder, so that a task resumed after
a restart redoes nothing that was done: ``samples.json`` (the collected data snapshot:
training goes on with exactly those samples, and the trainer's checkpoints in
``train/`` match them), ``export.json`` (the bundle in ``export/``, uploaded as is).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from edge_node.bus_reporter import BusReporter
from edge_node.collector import Collected
from edge_node.dataset import Dataset
from edge_node.errors import InvalidTrainingConfig
from edge_node.export import export_model
from edge_node.fetcher import FetchFailed
from edge_node.services import Services
from edge_node.tasks import Job
from edge_node.trainer import train
from fabbus.messages import ModelManifest, TrainCommand
from fabbus.model_bundle import BundleError, read_bundle
from fabbus.transfer import plan

log = logging.getLogger(__name__)

SAMPLES, EXPORT = "samples.json", "export.json"


def run_train(s: Services, job: Job, reporter: BusReporter) -> dict[str, Any]:
    cmd: TrainCommand = job.command  # type: ignore[assignment]
    folder = s.store.folder(job.task)
    exported = _read(folder / EXPORT)
    if exported is None or not Path(exported["path"]).is_file():
        exported = _train_and_export(s, job, cmd, folder, reporter)
    else:
        log.info("task %s: resuming with the exported model %s", job.task, exported["sha256"][:12])
    job.check()
    path = Path(exported["path"])
    manifest = ModelManifest(
        model=exported["sha256"], brand=cmd.brand, **plan(path, s.config.transfer.chunk_size).manifest_fields(),
        classes=list(cmd.config.classes), input_shape=exported["input_shape"], task=job.task,
        base_model=exported["base_model"], data_snapshot=exported["data_snapshot"], metrics=exported["metrics"],
        confusion_matrix=exported["confusion_matrix"], training_config=cmd.config.model_dump(mode="json"),
        created_at=exported["created_at"])
    result = s.uploads.upload(path, manifest, task=job.task, timeout_s=s.config.transfer.upload_timeout_s,
                              check=job.check)
    s.models.put(path, manifest.sha256)
    metrics = exported["metrics"]
    return {"model": manifest.model, "version": result.version, "sha256": manifest.sha256, "size": manifest.size,
            "registered": result.reason, "data_snapshot": exported["data_snapshot"],
            "samples": exported["samples"], "resumed_from": exported["resumed_from"],
            "started_from": exported.get("started_from"),
            "metrics": {k: metrics[k] for k in ("test_accuracy", "val_accuracy", "accuracy", "loss", "macro_f1",
                                                "epochs_trained") if k in metrics}}


def _train_and_export(s: Services, job: Job, cmd: TrainCommand, folder: Path, reporter: BusReporter
                      ) -> dict[str, Any]:
    start_from, base_model, started = _start_from(s, job, cmd)
    job.check()
    collected = _collect(s, job, cmd, folder, reporter)
    job.check()
    result = train(cmd.config, collected.dataset, folder / "train", reporter, job.cancel, resume=True,
                   task=job.task, start_from=start_from, progress_interval_s=s.config.progress_interval_s)
    job.check()
    splits = {"train": len(result.splits.train), "validation": len(result.splits.validation),
              "test": len(result.splits.test)}
    out = export_model(result.model, cmd.config, folder / "export", brand=cmd.brand, evaluation=result.evaluation,
                       history=result.history, extra_metrics={"samples": splits})
    metrics = dict(out.meta.metrics)
    confusion = metrics.pop("confusion_matrix", None)
    exported = {"path": str(out.path), "sha256": out.sha256, "size": out.size, "input_shape": list(out.meta.input_shape),
                "created_at": out.meta.created_at, "metrics": metrics, "confusion_matrix": confusion,
                "data_snapshot": result.snapshot, "base_model": base_model, "samples": splits,
                "resumed_from": list(result.resumed_from) if result.resumed_from else None, "started_from": started}
    _write(folder / EXPORT, exported)
    shutil.rmtree(folder / "train", ignore_errors=True)  # checkpoints are not needed once exported
    log.info("task %s: trained (%s), exported %s", job.task, splits, out.sha256[:12])
    return exported


def _start_from(s: Services, job: Job, cmd: TrainCommand) -> tuple[Path | None, str | None, dict[str, Any] | None]:
    """The model file training starts from (pretrained.source deployed or base_model), the base model's
    sha256 for the lineage, and what the task's details say about it.

    A base model is taken from the edge's model cache, or fetched from the cloud's registry (a
    model trained on another line, say): a FetchFailed (the task FAILS) when the cloud lacks it.
    """
    source = cmd.config.pretrained.source
    if source == "deployed":
        path, sha = s.deployed_bundle(cmd.brand), (s.deployed.get(cmd.brand) or {}).get("sha256")
        base = cmd.base_model or sha
        return path, base, {"source": source, "sha256": sha} if sha else None
    if source != "base_model":
        return None, cmd.base_model, None
    sha = cmd.base_model
    assert sha is not None  # TrainCommand's schema: source base_model names a base_model
    path = s.models.get(sha)
    fetched = path is None
    if path is None:
        log.info("task %s: fetching the base model %s from the cloud", job.task, sha[:12])
        try:
            path = s.fetches.fetch(sha, sha, task=job.task, timeout_s=s.config.transfer.fetch_timeout_s,
                                   check=job.check)
        except FetchFailed as exc:
            raise FetchFailed(f"base model {sha[:12]}: {exc}", exc.details) from None
    _check_architecture(path, sha, cmd)
    return path, sha, {"source": source, "sha256": sha, "fetched": fetched}


def _check_architecture(path: Path, sha: str, cmd: TrainCommand) -> None:
    """A base model of another architecture is refused before any data is collected."""
    try:
        theirs = read_bundle(path).meta.architecture
    except BundleError as exc:
        raise InvalidTrainingConfig(f"base model {sha[:12]}: {exc}") from None
    if theirs != cmd.config.architecture:
        raise InvalidTrainingConfig(f"base model {sha[:12]} is a {theirs}, the training config asks for "
                                    f"{cmd.config.architecture}")


def _collect(s: Services, job: Job, cmd: TrainCommand, folder: Path, reporter: BusReporter) -> Collected:
    """The task's data: collected once; a resumed task reuses the same samples when all are still cached."""
    saved = _read(folder / SAMPLES)
    if saved is not None:
        wanted = set(saved["sha256"])
        samples = tuple(x for x in s.cache.samples(cmd.brand, cmd.config.classes) if x.sha256 in wanted)
        if len({x.sha256 for x in samples}) == len(wanted):
            log.info("task %s: resuming with its %s collected samples", job.task, len(samples))
            dataset = Dataset(samples, tuple(s.config.brands[cmd.brand].classes))
            return Collected(dataset, dataset.snapshot_id(cmd.config.classes), saved["details"])
    collected = s.collector.collect(job.task, list(cmd.detectors), cmd.brand, list(cmd.config.classes),
                                    check=job.check, report=reporter.publish)
    _write(folder / SAMPLES, {"sha256": sorted({x.sha256 for x in collected.dataset.samples}),
                              "details": collected.details})
    return collected


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
