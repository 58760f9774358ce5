"""The end-to-end scenario's steps, through the factory's public interfaces only: the REST API and the bus.

    scenario = Scenario(api, watch, ScenarioSettings(pretrained="/path/on/the/edge.weights.h5"))
    report = scenario.run()          # ScenarioFailed with the reason when a step fails

1. the fleet is online; 2. line 1's detectors have inspected enough products (their
history); 3. train a small CNN on line 1 and wait for SUCCEEDED; 4. the registered
version and its evaluation gate; 5. deploy it to both detectors of line 1 and wait for
SUCCEEDED with every delivery ACTIVE; 6. both detectors report the new model active
on the bus and keep inspecting with it; 7. train MobileNetV2 (alpha 0.35) with
fine-tuning on line 1 from the plant's pretrained weights file (a file on the edge);
8. fine-tune that registered model on line 2 (``base_model``: line 2's edge fetches it
from the registry), and check the new version's lineage names it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from demo.cloud_api import CloudApi
from demo.observer import StatusWatch

FINAL = ("SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT")


class ScenarioFailed(RuntimeError):
    """A step did not reach its expected state; the message says which and why."""


@dataclass
class ScenarioSettings:
    site: str = "plant1"
    line1: str = "line1"
    line2: str = "line2"
    detectors: tuple[str, ...] = ("cam1", "cam2")
    brand: str = "brandB"
    input_size: int = 32
    cnn_epochs: int = 3
    mobilenet_epochs: int = 2
    fine_tune_epochs: int = 1
    pretrained: str | None = None          # the MobileNetV2 weights file on line 1's edge
    min_inspected: int = 600               # per detector before training
    train_timeout_s: float = 420.0
    deploy_timeout_s: float = 240.0
    wait_timeout_s: float = 120.0
    history_timeout_s: float = 300.0


@dataclass
class Report:
    timings: list[tuple[str, float]] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return sum(t for _, t in self.timings)


class Scenario:
    def __init__(self, api: CloudApi, watch: StatusWatch, settings: ScenarioSettings,
                 out: Callable[[str], None] = print) -> None:
        self.api, self.watch, self.s, self.out = api, watch, settings, out
        self.report = Report()
        self._t0 = time.monotonic()

    # ---- helpers

    def say(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self._t0:7.1f}s] {text}")

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.say(f"-> {name}")
        t = time.monotonic()
        yield
        took = time.monotonic() - t
        self.report.timings.append((name, took))
        self.say(f"ok {name} ({took:.1f} s)")

    def line(self, name: str) -> str:
        return f"{self.s.site}/{name}"

    def det_key(self, line: str, det: str) -> str:
        return f"{self.s.site}/{line}/det/{det}"

    def poll(self, check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"{what}: not within {timeout:.0f} s")
            time.sleep(interval)

    def wait_task(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Poll GET /tasks/<id> until a final state, printing progress; the detail if SUCCEEDED."""
        last, shown = "", 0.0
        deadline = time.monotonic() + timeout
        while True:
            task = self.api.get(f"/tasks/{task_id}")
            line = f"   {task['state']:<11} {task['percent']:5.1f}%  {_progress(task.get('progress') or {})}"
            if line != last and (time.monotonic() - shown > 5 or task["state"] in FINAL):
                self.say(line)
                last, shown = line, time.monotonic()
            if task["state"] in FINAL:
                break
            if time.monotonic() > deadline:
                raise ScenarioFailed(f"task {task_id} still {task['state']} after {timeout:.0f} s")
            time.sleep(1.0)
        if task["state"] != "SUCCEEDED":
            events = "; ".join(f"{e['state']} {e.get('reason', '')}".strip() for e in task.get("events", [])[-5:])
            reason = task.get("reason") or "?"
            raise ScenarioFailed(f"task {task_id} ended {task['state']}: {reason} (events: {events})")
        return task

    # ---- the steps

    def run(self) -> Report:
        s = self.s
        with self.step("fleet online (GET /api/v1/fleet)"):
            self.wait_fleet()
        with self.step(f"history: each detector of {s.line1} and {s.line2} inspected >= {s.min_inspected} products"):
            self.wait_history()
        with self.step(f"train small_cnn on {self.line(s.line1)} ({s.cnn_epochs} epochs, input {s.input_size})"):
            version = self.train(s.line1, self.cnn_config())
        with self.step("registered version and its evaluation gate"):
            model = self.check_version(version, s.line1)
        with self.step(f"deploy v{model['version']} to {self.line(s.line1)} {list(s.detectors)}"):
            self.deploy(model)
        with self.step("both detectors ACTIVE with the new model and inspecting with it (bus)"):
            self.check_detectors(model)
        with self.step(f"train mobilenet_v2 (alpha 0.35) with fine-tuning on {self.line(s.line1)}, "
                       "from the plant's pretrained weights file"):
            base_id = self.train(s.line1, self.mobilenet_config(pretrained={"source": "file", "path": self.weights()}))
            base = self.report.facts["base_model"] = self.check_version(base_id, s.line1, quiet=True)
        with self.step(f"fine-tune it (v{base['version']} of {self.line(s.line1)}) on {self.line(s.line2)}: "
                       "base_model, fetched from the registry"):
            version2 = self.train(s.line2, self.mobilenet_config(pretrained={"source": "base_model"}),
                                  base_model=base_id)
            self.report.facts["line2_model"] = self.check_lineage(self.check_version(version2, s.line2, quiet=True),
                                                                  base)
        return self.report

    def wait_fleet(self) -> None:
        keys = [self.line(ln) for ln in (self.s.line1, self.s.line2)]
        keys += [self.det_key(ln, d) for ln in (self.s.line1, self.s.line2) for d in self.s.detectors]

        def online() -> bool:
            nodes = self.api.nodes()
            return all(nodes.get(k, {}).get("online") for k in keys)
        self.poll(online, self.s.wait_timeout_s, f"nodes {keys} online")

    def wait_history(self) -> None:
        keys = [self.det_key(ln, d) for ln in (self.s.line1, self.s.line2) for d in self.s.detectors]

        def enough(w: StatusWatch) -> bool:
            return all((st := w.latest(k)) is not None and st.inspected >= self.s.min_inspected for k in keys)
        try:
            self.watch.wait(enough, self.s.history_timeout_s, "detector history")
        except TimeoutError as exc:
            have = {k: getattr(self.watch.latest(k), "inspected", None) for k in keys}
            raise ScenarioFailed(f"{exc}; inspected so far: {have}") from None
        self.say(f"   inspected: { {k: self.watch.latest(k).inspected for k in keys} }")  # type: ignore[union-attr]

    def classes(self) -> list[str]:
        brand = next((b for b in self.api.get("/brands")["brands"] if b["name"] == self.s.brand), None)
        if brand is None:
            raise ScenarioFailed(f"brand {self.s.brand} is not known to the cloud")
        return [brand["ok_class"], *(c for c in brand["classes"] if c != brand["ok_class"])]

    def cnn_config(self) -> dict[str, Any]:
        return {"classes": self.classes(), "architecture": "small_cnn", "input_size": self.s.input_size,
                "epochs": self.s.cnn_epochs, "learning_rate": 0.003,
                "generators": {"batch_size": 16, "validation_split": 0.2, "test_split": 0.2,
                               "class_weights": "balanced"}}

    def weights(self) -> str:
        if not self.s.pretrained:
            raise ScenarioFailed("no pretrained MobileNetV2 weights file for line 1 (the factory writes one)")
        return self.s.pretrained

    def mobilenet_config(self, pretrained: dict[str, Any]) -> dict[str, Any]:
        return {"classes": self.classes(), "architecture": "mobilenet_v2", "alpha": 0.35,
                "input_size": self.s.input_size, "epochs": self.s.mobilenet_epochs, "learning_rate": 0.002,
                "generators": {"batch_size": 32, "validation_split": 0.2, "test_split": 0.2,
                               "class_weights": "balanced"},
                "pretrained": pretrained,
                "fine_tune": {"enabled": True, "unfreeze_top_layers": 20, "epochs": self.s.fine_tune_epochs,
                              "learning_rate": 1e-4}}

    def train(self, line: str, config: dict[str, Any], base_model: int | None = None) -> int:
        body = {"line": self.line(line), "brand": self.s.brand, "detectors": list(self.s.detectors), "config": config,
                "base_model": base_model}
        task = self.api.post("/tasks/train", body)
        self.say(f"   task {task['id']} {task['state']}")
        done = self.wait_task(task["id"], self.s.train_timeout_s)
        details = next((e.get("details") or {} for e in reversed(done.get("events", []))
                        if e["state"] == "SUCCEEDED"), {})
        self.say(f"   samples {details.get('samples')}, metrics {details.get('metrics')}")
        if base_model is not None:
            self.report.facts.setdefault("started_from", {})[line] = details.get("started_from")
            self.say(f"   started from {details.get('started_from')}")
        ref = done.get("model_version") or (done.get("models") or [None])[0]
        if not ref:
            raise ScenarioFailed(f"task {task['id']} SUCCEEDED but registered no model version")
        return int(ref["id"])

    def check_version(self, version_id: int, line: str, quiet: bool = False) -> dict[str, Any]:
        model = self.poll(lambda: (m := self.api.get(f"/models/{version_id}"))["gate_state"] != "pending" and m,
                          self.s.wait_timeout_s, f"evaluation of model version {version_id}")
        if model["line"] != self.line(line) or model["brand"] != self.s.brand:
            raise ScenarioFailed(f"version {version_id} is for {model['line']} {model['brand']}")
        if len(model["sha256"]) != 64 or not model["size"]:
            raise ScenarioFailed(f"version {version_id} has no model file: sha256 {model['sha256']!r}")
        acc = (model.get("metrics") or {}).get("test_accuracy")
        self.say(f"   v{model['version']} (id {model['id']}) sha256 {model['sha256'][:12]} {model['size']} bytes, "
                 f"test accuracy {acc}, gate {model['gate_state']} {model.get('gate_reasons') or ''}")
        if not quiet:
            self.report.facts["line1_model"] = model
        return model

    def check_lineage(self, model: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """The version names ``base`` as its parent, and the edge started from base's weights."""
        lineage, started = model["lineage"], self.report.facts.get("started_from", {}).get(self.s.line2) or {}
        if lineage["base_model"] != base["sha256"] or (lineage.get("parent") or {}).get("id") != base["id"]:
            raise ScenarioFailed(f"version {model['id']} lineage {lineage['base_model']} / {lineage.get('parent')} "
                                 f"does not name base version {base['id']} ({base['sha256'][:12]})")
        if started.get("sha256") != base["sha256"] or started.get("source") != "base_model":
            raise ScenarioFailed(f"line 2's edge did not start from the base model: started_from {started}")
        self.say(f"   v{model['version']} of {model['line']} descends from v{base['version']} of {base['line']} "
                 f"(fetched by line 2's edge: {started.get('fetched')})")
        return model

    def deploy(self, model: dict[str, Any]) -> None:
        override = model["gate_state"] != "approved"
        if override:
            self.say(f"   the gate rejected it ({model['gate_reasons']}): deploying with override, as recorded")
        body = {"line": self.line(self.s.line1), "brand": self.s.brand, "detectors": list(self.s.detectors),
                "model_version": model["id"], "override": override}
        task = self.api.post("/tasks/deploy", body)
        self.say(f"   task {task['id']} {task['state']}")
        done = self.wait_task(task["id"], self.s.deploy_timeout_s)
        states = {d["detector"]: d["state"] for d in done.get("deployments", [])}
        if sorted(states) != sorted(self.s.detectors) or set(states.values()) != {"ACTIVE"}:
            raise ScenarioFailed(f"deployments after SUCCEEDED: {states}")
        self.say(f"   deployments {states}")

    def check_detectors(self, model: dict[str, Any]) -> None:
        keys = [self.det_key(self.s.line1, d) for d in self.s.detectors]
        sha, brand = model["sha256"], self.s.brand

        def active(w: StatusWatch) -> dict[str, int] | None:
            got = {k: st.inspected for k in keys if (st := w.latest(k)) and
                   (m := st.active_models.get(brand)) is not None and m.sha256 == sha}
            return got if len(got) == len(keys) else None
        try:
            start = self.watch.wait(active, self.s.wait_timeout_s, f"detector_status with {sha[:12]} active")
            more = self.watch.wait(lambda w: (n := active(w)) and all(n[k] >= start[k] + 20 for k in keys) and n,
                                   self.s.wait_timeout_s, "inspections with the new model")
        except TimeoutError as exc:
            now = {k: (st.inspected, {b: m.sha256[:12] for b, m in st.active_models.items()})
                   for k in keys if (st := self.watch.latest(k))}
            raise ScenarioFailed(f"{exc}; detector_status now: {now}") from None
        nodes = self.api.nodes()
        cloud_view = {k: ((nodes.get(k) or {}).get("models") or {}).get(brand, {}).get("model_version_id")
                      for k in keys}
        if set(cloud_view.values()) != {model["id"]}:
            raise ScenarioFailed(f"the cloud's fleet view does not show version {model['id']} active: {cloud_view}")
        self.say(f"   inspected {start} -> {more} with {sha[:12]}; fleet shows version {model['id']} active")


def _progress(p: dict[str, Any]) -> str:
    """A task's latest progress on one line: training (phase, epoch, batch, accuracy, loss, ETA),
    collection (detector, samples) or deployment (per detector)."""
    if "detectors" in p and isinstance(p["detectors"], dict):
        return " ".join(f"{d}: {v.get('state')} {v.get('percent', 0):.0f}%" for d, v in p["detectors"].items())
    if "samples_total" in p:
        return f"collecting from {p.get('detector')}: {p.get('samples_fetched')}/{p.get('samples_total')} fetched"
    if "epoch" in p:
        out = f"{p.get('phase', '')} epoch {p.get('epoch')}/{p.get('epochs')} batch {p.get('batch')}/{p.get('batches')}"
        for key, label in (("accuracy", "acc"), ("loss", "loss"), ("eta_s", "eta s")):
            if isinstance(p.get(key), (int, float)):
                out += f" {label} {p[key]:.3f}" if key != "eta_s" else f" {label} {p[key]:.0f}"
        return out
    return ""
