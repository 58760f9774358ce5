"""The evaluation gate: checks an uploaded model version and approves or rejects it.

Checks, each recorded with its result in ``ModelVersion.evaluation["checks"]``:
  integrity   the stored file has the registered size and sha256
  bundle      it is a model bundle (fabbus.model_bundle) for this brand
  signature   its classes are the brand's; LiteRT loads it; input [1, H, W, C] float32, output [1, classes]
  latency     p50 of ``gate.latency_runs`` inferences on this machine <= ``gate.max_latency_ms``; outputs are
              probabilities
  accuracy    the manifest's test accuracy (else validation accuracy) >= ``gate.min_accuracy``
  recall      the recall of every defect class (all but the OK class) >= its floor
  baseline    accuracy not lower than the model deployed now on the line for the brand by more than
              ``gate.max_accuracy_drop``

Raw images never reach the cloud, so accuracy and recall are the edge's figures on its
held-out test split (the manifest's metrics); the cloud checks the file itself and its speed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from sqlalchemy import select
from sqlalchemy.orm import Session

from fabbus.model_bundle import BundleError, read_bundle, sha256_file

from cloud_app.config import GateConfig
from cloud_app.db import Database
from cloud_app.errors import NotFound
from cloud_app.fleet import find_brand
from cloud_app.models import Change, DetectorModel, ModelVersion, Node, now
from cloud_app.registry import ModelStore, accuracy_of

log = logging.getLogger(__name__)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def deployed_baseline(s: Session, mv: ModelVersion) -> ModelVersion | None:
    """The registry version active most recently on a detector of ``mv``'s line for its brand (not ``mv``)."""
    q = (select(DetectorModel).join(Node, DetectorModel.node_id == Node.id)
         .where(Node.line_id == mv.line_id, DetectorModel.brand == mv.brand,
                DetectorModel.model_version_id.is_not(None), DetectorModel.model_version_id != mv.id)
         .order_by(DetectorModel.activated_at.desc()))
    row = s.scalars(q).first()
    return row.model_version if row is not None else None


def _signature_and_latency(tflite: bytes, input_shape: tuple[int, ...], n_classes: int,
                           gate: GateConfig) -> tuple[Check, Check, dict[str, float]]:
    try:
        interp = Interpreter(model_content=tflite, num_threads=1)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        return Check("signature", False, f"LiteRT cannot load model.tflite: {str(exc).strip()[:200]}"), \
            Check("latency", False, "not measured: the model does not load"), {}
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    want_in, want_out = [1, *input_shape], [1, n_classes]
    got_in = [int(d) for d in inputs[0]["shape"]] if len(inputs) == 1 else None
    got_out = [int(d) for d in outputs[0]["shape"]] if len(outputs) == 1 else None
    if got_in != want_in or got_out != want_out or inputs[0]["dtype"] != np.float32:
        detail = (f"model takes {got_in if got_in else f'{len(inputs)} inputs'} "
                  f"({np.dtype(inputs[0]['dtype']).name if inputs else '-'}) and gives "
                  f"{got_out if got_out else f'{len(outputs)} outputs'}; expected float32 {want_in} -> {want_out}")
        return Check("signature", False, detail), Check("latency", False, "not measured: wrong signature"), {}
    sig = Check("signature", True, f"float32 {want_in} -> {want_out}")
    rng = np.random.default_rng(0)
    times: list[float] = []
    for _ in range(gate.latency_runs):
        x = rng.random(want_in, dtype=np.float32)
        start = time.perf_counter()
        interp.set_tensor(inputs[0]["index"], x)
        interp.invoke()
        scores = interp.get_tensor(outputs[0]["index"])[0]
        times.append((time.perf_counter() - start) * 1000)
        if not np.all(np.isfinite(scores)) or abs(float(scores.sum()) - 1) > 1e-3 or scores.min() < -1e-3:
            return sig, Check("latency", False, "outputs are not class probabilities (softmax)"), {}
    p50, p99 = float(np.percentile(times, 50)), float(np.percentile(times, 99))
    lat = Check("latency", p50 <= gate.max_latency_ms,
                f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(times)} runs (limit {gate.max_latency_ms} ms)")
    return sig, lat, {"p50": round(p50, 4), "p99": round(p99, 4), "runs": len(times)}


def _metric_checks(mv: ModelVersion, ok_class: str, baseline: ModelVersion | None,
                   gate: GateConfig) -> list[Check]:
    checks: list[Check] = []
    acc = accuracy_of(mv)
    if acc is None:
        checks.append(Check("accuracy", not gate.require_metrics, "the manifest reports no accuracy"))
    else:
        checks.append(Check("accuracy", acc >= gate.min_accuracy, f"{acc:.4f} (floor {gate.min_accuracy})"))
    recall = (mv.metrics or {}).get("recall")
    defects = [c for c in mv.classes if c != ok_class]
    if not isinstance(recall, dict):
        checks.append(Check("recall", not gate.require_metrics, "the manifest reports no per-class recall"))
    else:
        low = []
        for c in defects:
            floor = gate.min_recall_per_class.get(c, gate.min_recall)
            value = recall.get(c)
            if not isinstance(value, (int, float)) or value < floor:
                low.append(f"{c} {value if value is None else f'{value:.3f}'} < {floor}")
        checks.append(Check("recall", not low, "recall too low: " + ", ".join(low) if low
                            else f"every defect class at or above its floor ({len(defects)} classes)"))
    if baseline is None:
        checks.append(Check("baseline", True, "no model deployed on this line for this brand: nothing to compare"))
    else:
        base_acc = accuracy_of(baseline)
        if base_acc is None or acc is None:
            checks.append(Check("baseline", acc is not None or not gate.require_metrics,
                                f"cannot compare with deployed v{baseline.version}: accuracy unknown"))
        else:
            drop = base_acc - acc
            checks.append(Check("baseline", drop <= gate.max_accuracy_drop,
                                f"accuracy {acc:.4f} vs deployed v{baseline.version} {base_acc:.4f} "
                                f"(drop {drop:+.4f}, allowed {gate.max_accuracy_drop})"))
    return checks


def _file_checks(path: Path, mv: ModelVersion, brand_classes: list[str], gate: GateConfig) -> tuple[
        list[Check], dict[str, float]]:
    if not path.is_file():
        return [Check("integrity", False, f"file {mv.path} is missing from the model store")], {}
    size, digest = path.stat().st_size, sha256_file(path)
    if size != mv.size or digest != mv.sha256:
        return [Check("integrity", False, f"stored file has {size} bytes, sha256 {digest[:12]}...; "
                                          f"registered {mv.size} bytes, {mv.sha256[:12]}...")], {}
    checks = [Check("integrity", True, f"{size} bytes, sha256 matches")]
    try:
        bundle = read_bundle(path)
    except BundleError as exc:
        return [*checks, Check("bundle", False, str(exc).replace(str(path), "bundle"))], {}
    meta = bundle.meta
    if meta.brand != mv.brand:
        return [*checks, Check("bundle", False, f"bundle is for brand {meta.brand!r}, not {mv.brand!r}")], {}
    checks.append(Check("bundle", True, f"{meta.architecture}, input {list(meta.input_shape)}"))
    if list(meta.classes) != list(brand_classes) and set(meta.classes) != set(brand_classes):
        checks.append(Check("signature", False, f"model classes {meta.classes} are not brand {mv.brand}'s "
                                                f"{brand_classes}"))
        return checks, {}
    sig, lat, latency = _signature_and_latency(bundle.tflite, tuple(meta.input_shape), len(meta.classes), gate)
    return [*checks, sig, lat], latency


def evaluate(db: Database, store: ModelStore, gate: GateConfig, version_id: int) -> str:
    """Run every check on a version and store the verdict; the gate state (approved / rejected).

    The file checks (hashing, LiteRT) run outside any transaction: a SQLite writer lock is
    held only for the final update.
    """
    with db.session(readonly=True) as s:
        mv = s.get(ModelVersion, version_id)
        if mv is None:
            raise NotFound("model version", version_id)
        brand = find_brand(s, mv.brand)
        classes, ok_class, path = list(brand.classes), brand.ok_class, store.abspath(mv.path)
        start = time.perf_counter()
        checks, latency = _file_checks(path, mv, classes, gate)
    with db.session() as s:
        mv = s.get(ModelVersion, version_id)
        if mv is None:
            raise NotFound("model version", version_id)
        baseline = deployed_baseline(s, mv)
        if all(c.passed for c in checks):
            checks += _metric_checks(mv, ok_class, baseline, gate)
        failed = [f"{c.name}: {c.detail}" for c in checks if not c.passed]
        mv.gate_state = "rejected" if failed else "approved"
        mv.gate_reasons = failed
        mv.evaluated_at = now()
        mv.evaluation = {"checks": [c.as_dict() for c in checks], "latency_ms": latency or None,
                         "accuracy": accuracy_of(mv),
                         "baseline": {"id": baseline.id, "version": baseline.version,
                                      "accuracy": accuracy_of(baseline)} if baseline else None,
                         "gate": gate.model_dump(mode="json"),
                         "duration_s": round(time.perf_counter() - start, 4)}
        s.add(Change(kind="model", ref=str(mv.id)))
        log.info("gate %s %s v%s: %s%s", mv.line.key, mv.brand, mv.version, mv.gate_state,
                 f" ({'; '.join(failed)})" if failed else "")
        return mv.gate_state
