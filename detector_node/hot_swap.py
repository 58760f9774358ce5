"""Hot model swap per brand: load beside the running model, swap a reference, check, roll back.

- :meth:`ModelSlots.deploy` queues a delivered model for the loader thread, which
  loads and validates it (``loader``: :func:`detector_node.runtime.load_runner`)
  while inspection goes on with the current model; then it moves the store's
  pointer and swaps the brand's reference under a lock held for two assignments.
- The new model is on probation for its first ``probation`` inferences: the
  inspection loop calls :meth:`ModelSlots.report` after each one. An exception or an
  invalid output rolls the brand back at once (a reference swap to the previous
  model, kept loaded), then the loader thread moves the store's pointer back and
  reports ROLLED_BACK with the reason.
- :meth:`ModelSlots.rollback` is the explicit command (``model_rollback``).

Events (LOADING, ACTIVE, FAILED, ROLLED_BACK) go to ``on_event``; the bus side
(:mod:`detector_node.delivery`) turns them into DeliveryStatus messages.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fabbus.messages import DeliveryState

from detector_node.errors import DetectorError
from detector_node.model_store import ModelEntry, ModelStore

log = logging.getLogger(__name__)


class Runner(Protocol):
    """What the swapper needs of a loaded model (detector_node.runtime.ModelRunner)."""

    brand: str
    entry: ModelEntry


Loader = Callable[[str, Path, ModelEntry], Runner]


@dataclass(frozen=True)
class SwapEvent:
    brand: str
    state: DeliveryState
    entry: ModelEntry | None  # the model the event is about; None: a refused rollback command
    reason: str = ""
    previous: ModelEntry | None = None
    correlation_id: str | None = None


EventHandler = Callable[[SwapEvent], None]
_STOP = object()


class ModelSlots:
    """The active (and previous) model of every brand, and the loader thread that changes them."""

    def __init__(self, store: ModelStore, loader: Loader, *, probation: int = 20,
                 on_event: EventHandler | None = None) -> None:
        self.store = store
        self.probation = probation
        self._loader = loader
        self._on_event = on_event or (lambda event: None)
        self._lock = threading.Lock()  # guards the three dicts; held for assignments only
        self._active: dict[str, Runner] = {}
        self._previous: dict[str, Runner] = {}
        self._trial: dict[str, int] = {}  # brand -> inferences left on probation
        self._cids: dict[str, str | None] = {}  # brand -> correlation id (task) of the model on probation
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)

    # ---- the inspection path: cheap ---------------------------------------------------------------

    def get(self, brand: str) -> Runner | None:
        return self._active.get(brand)

    def on_probation(self, brand: str) -> bool:
        return self._trial.get(brand, 0) > 0

    def report(self, runner: Runner, error: str | None) -> bool:
        """Record one inference of ``runner``; True if this rolled its brand back (retry with :meth:`get`)."""
        brand = runner.brand
        if self._trial.get(brand, 0) <= 0:  # the common case, without the lock
            return False
        with self._lock:
            left = self._trial.get(brand, 0)
            if left <= 0 or self._active.get(brand) is not runner:
                return False
            if error is None:
                self._trial[brand] = left - 1
                if left == 1:
                    log.info("%s: model %s passed probation", brand, runner.entry.model)
                return False
            previous = self._previous.pop(brand, None)
            if previous is None:
                self._trial[brand] = 0  # nothing to go back to: keep it, the loop answers the default verdict
                log.error("%s: model %s failed on probation (%s) and no previous model is loaded",
                          brand, runner.entry.model, error)
                return False
            self._active[brand] = previous
            self._trial[brand] = 0
        log.error("%s: model %s failed on probation: %s; rolled back to %s",
                  brand, runner.entry.model, error, previous.entry.model)
        self._jobs.put(("persist_rollback", brand, runner.entry, previous.entry, f"failed on probation: {error}",
                        self._cids.get(brand)))
        return True

    # ---- commands (any thread) ---------------------------------------------------------------------

    def deploy(self, brand: str, path: Path, entry: ModelEntry, correlation_id: str | None = None) -> None:
        """Queue a delivered bundle (already in the store's models/ folder) to be loaded and swapped in."""
        self._jobs.put(("deploy", brand, path, entry, correlation_id))

    def rollback(self, brand: str, reason: str = "", correlation_id: str | None = None) -> None:
        """Queue an explicit rollback to the previous model."""
        self._jobs.put(("rollback", brand, reason, correlation_id))

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until the loader has finished every queued job (tests, shutdown)."""
        done = threading.Event()
        self._jobs.put(("call", done.set))
        return done.wait(timeout)

    # ---- lifecycle ----------------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Load each brand's last active model from the store (at start, before inspecting); problems found."""
        problems = []
        for brand in self.store.brands:
            while (entry := self.store.active(brand)) is not None:
                try:
                    runner = self._loader(brand, self.store.path_of(brand, entry), entry)
                except DetectorError as exc:
                    problems.append(f"{brand}: active model {entry.model} does not load: {exc}")
                    if self.store.previous(brand) is None:
                        break  # keep the pointer: a fixed runtime may load it next time
                    self.store.rollback(brand)
                    continue
                with self._lock:
                    self._active[brand] = runner
                self._load_previous(brand)
                break
        for problem in problems:
            log.error("%s", problem)
        return problems

    def start(self) -> ModelSlots:
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._jobs.put((_STOP,))
            self._thread.join(timeout)

    def active_entries(self) -> dict[str, ModelEntry]:
        return {brand: runner.entry for brand, runner in list(self._active.items())}

    # ---- the loader thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get())[0] is not _STOP:
            try:  # boundary: one job must not stop the loader
                getattr(self, f"_do_{job[0]}")(*job[1:])
            except Exception:
                log.exception("model loader: %s job failed", job[0])

    def _do_call(self, fn: Callable[[], None]) -> None:
        fn()

    def _emit(self, event: SwapEvent) -> None:
        try:  # boundary: a reporting failure must not stop the loader
            self._on_event(event)
        except Exception:
            log.exception("model event handler failed on %s", event)

    def _do_deploy(self, brand: str, path: Path, entry: ModelEntry, cid: str | None) -> None:
        current = self.get(brand)
        if current is not None and current.entry.sha256 == entry.sha256:
            self.store.discard(brand, path)
            self._emit(SwapEvent(brand, DeliveryState.ACTIVE, current.entry, "already active", None, cid))
            return
        self._emit(SwapEvent(brand, DeliveryState.LOADING, entry, correlation_id=cid))
        try:
            runner = self._loader(brand, path, entry)
            self.store.activate(brand, entry)
        except (DetectorError, OSError) as exc:
            self.store.discard(brand, path)
            log.error("%s: model %s refused: %s", brand, entry.model, exc)
            self._emit(SwapEvent(brand, DeliveryState.FAILED, entry, str(exc), None, cid))
            return
        with self._lock:
            old = self._active.get(brand)
            self._trial[brand] = self.probation  # before the swap: get() is lock-free
            self._cids[brand] = cid
            self._active[brand] = runner
            if old is not None:
                self._previous[brand] = old
        self._emit(SwapEvent(brand, DeliveryState.ACTIVE, self.store.active(brand) or entry,
                             previous=old.entry if old else None, correlation_id=cid))

    def _do_persist_rollback(self, brand: str, bad: ModelEntry, good: ModelEntry, reason: str,
                             cid: str | None) -> None:
        active = self.store.active(brand)
        if active is not None and active.sha256 == bad.sha256:
            self.store.rollback(brand)
        self._emit(SwapEvent(brand, DeliveryState.ROLLED_BACK, bad, reason, good, cid))
        self._load_previous(brand)

    def _do_rollback(self, brand: str, reason: str, cid: str | None) -> None:
        """Explicit rollback; a refusal is a FAILED event without an entry (the brand's model is unchanged)."""
        current, target = self.store.active(brand), self.store.previous(brand)
        if current is None or target is None:
            why = f"rollback refused: no previous model for brand {brand!r}"
            self._emit(SwapEvent(brand, DeliveryState.FAILED, None, why, None, cid))
            return
        runner = self._previous.get(brand)
        try:
            if runner is None or runner.entry.sha256 != target.sha256:
                runner = self._loader(brand, self.store.path_of(brand, target), target)
            self.store.rollback(brand)
        except DetectorError as exc:
            why = f"rollback refused: previous model {target.model} unusable: {exc}"
            self._emit(SwapEvent(brand, DeliveryState.FAILED, None, why, None, cid))
            return
        with self._lock:
            self._active[brand] = runner
            self._previous.pop(brand, None)
            self._trial[brand] = 0
        why = f"rollback command: {reason}" if reason else "rollback command"
        self._emit(SwapEvent(brand, DeliveryState.ROLLED_BACK, current, why, target, cid))
        self._load_previous(brand)

    def _load_previous(self, brand: str) -> None:
        """Keep the store's previous model loaded, so that a rollback is a reference swap."""
        entry = self.store.previous(brand)
        if entry is None:
            return
        try:
            runner = self._loader(brand, self.store.path_of(brand, entry), entry)
        except DetectorError as exc:
            log.warning("%s: previous model %s does not load (%s); rollback unavailable", brand, entry.model, exc)
            return
        with self._lock:
            self._previous[brand] = runner
