"""The receiving side of a chunked transfer: puts a file back together from a manifest and its chunks.

    receiver = Receiver(lambda m: params / m.brand / f"{m.model}.zip",
                        request=lambda req: client.publish("delivery_request", req, brand="b1"),
                        on_status=report)                  # DOWNLOADING (rate-limited), VERIFYING, COMPLETE...
    client.subscribe("delivery_manifest", receiver.on_manifest, brand="b1")
    client.subscribe("delivery_chunk", receiver.on_chunk, brand="b1")
    ...
    receiver.close()

A manifest opens a PartFile (a pre-allocated temp file beside the destination); each chunk is
checked (index, length, sha256) and written at ``index * chunk_size``, so memory
stays at one chunk whatever the file size. When the stream goes quiet for
``quiet_s`` the receiver asks again for what it lacks; after ``max_retries``
requests in a row that bring nothing, the transfer FAILS. The complete file is
checked (size, sha256), fsynced and renamed atomically into place; a mismatch
asks for the whole file again (bounded by ``max_retries`` too). A manifest for
another model cancels the transfer in progress and removes its temp file.

Thread-safety: the handlers run on the bus client's dispatcher thread, the quiet
timer on the receiver's own thread; one lock serialises them, and the callbacks
(``request``, ``on_status``) are called under it, in order: keep them short.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fabbus.chunks import (MAX_CHUNK_SIZE, MAX_TRANSFER_BYTES, PartFile, TransferError, check_chunk, check_manifest,
                           same_file)
from fabbus.messages import ChunkRequest, ModelChunk, ModelManifest

log = logging.getLogger(__name__)

State = Literal["DOWNLOADING", "VERIFYING", "COMPLETE", "FAILED", "CANCELED"]
FINAL_STATES = ("COMPLETE", "FAILED", "CANCELED")
MAX_REQUEST_CHUNKS = 4096           # a longer list goes in several requests


@dataclass(frozen=True)
class TransferStatus:
    """Where a transfer stands; ``path`` is set once COMPLETE."""

    model: str
    state: State
    percent: float = 0.0
    reason: str = ""
    manifest: ModelManifest | None = None
    path: Path | None = None
    received: int = 0
    chunk_count: int = 0

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES


@dataclass
class _Transfer:
    part: PartFile
    last_activity: float = field(default_factory=time.monotonic)
    last_emit: float = 0.0
    progressed: bool = False          # a new chunk arrived since the last request
    fruitless: int = 0                # requests in a row that brought nothing
    restarts: int = 0                 # whole-file verifications that failed

    @property
    def manifest(self) -> ModelManifest:
        return self.part.manifest

    def percent(self) -> float:
        return round(100.0 * self.part.bytes / self.manifest.size, 1)


class Receiver:
    """Assembles one file at a time (per brand on a detector, per model upload in the cloud)."""

    def __init__(self, destination: Path | Callable[[ModelManifest], Path], *,
                 request: Callable[[ChunkRequest], Any], on_status: Callable[[TransferStatus], Any] | None = None,
                 quiet_s: float = 3.0, max_retries: int = 5, progress_interval: float = 0.5,
                 max_size: int = MAX_TRANSFER_BYTES, max_chunk_size: int = MAX_CHUNK_SIZE) -> None:
        self._destination = destination if callable(destination) else (lambda m: Path(destination))
        self._request, self._on_status = request, on_status
        self.quiet_s, self.max_retries, self.progress_interval = quiet_s, max_retries, progress_interval
        self.max_size, self.max_chunk_size = max_size, max_chunk_size
        self._cond = threading.Condition(threading.RLock())
        self._current: _Transfer | None = None
        self._status: TransferStatus | None = None
        self._closed = False
        self._timer: threading.Thread | None = None
        self.rejections: deque[str] = deque(maxlen=32)
        self.stats = dict.fromkeys(("manifests", "chunks", "duplicates", "ignored", "rejected", "requests",
                                    "completed", "failed", "canceled"), 0)

    # ---- bus handlers (dispatcher thread)

    def on_manifest(self, msg: Any) -> None:
        """Handler for ModelManifest (a ReceivedMessage or the body)."""
        m: ModelManifest = getattr(msg, "body", msg)
        with self._cond:
            if self._closed:
                return
            self.stats["manifests"] += 1
            cur = self._current
            if cur is not None and same_file(cur.manifest, m):
                log.debug("repeated manifest for %s: the transfer goes on", m.model)
                cur.last_activity = time.monotonic()
                return
            if cur is not None:
                self._end(cur, "CANCELED", f"superseded by a manifest for model {m.model}")
            try:
                check_manifest(m, max_size=self.max_size, max_chunk_size=self.max_chunk_size)
                self._current = _Transfer(PartFile(m, Path(self._destination(m))))
            except (TransferError, OSError) as exc:
                reason = f"manifest refused: {exc}"
                self._refuse(f"{m.model}: {reason}")
                self.stats["failed"] += 1
                self._emit(TransferStatus(m.model, "FAILED", reason=reason, manifest=m, chunk_count=m.chunk_count))
                return
            log.info("receiving %s: %s bytes in %s chunks", m.model, m.size, m.chunk_count)
            self._progress(self._current, force=True)
            self._start_timer()

    def on_chunk(self, msg: Any) -> None:
        """Handler for ModelChunk (a ReceivedMessage or the body)."""
        c: ModelChunk = getattr(msg, "body", msg)
        with self._cond:
            t = self._current
            if t is None or c.model != t.manifest.model:
                self.stats["ignored"] += 1
                log.debug("ignoring chunk %s of model %s (no transfer of it in progress)", c.index, c.model)
                return
            t.last_activity = time.monotonic()
            try:
                check_chunk(t.manifest, c)
            except TransferError as exc:
                self._refuse(f"{c.model}: {exc}")
                return
            try:
                fresh = t.part.write(c)
            except OSError as exc:
                self._end(t, "FAILED", f"cannot write chunk {c.index}: {exc}")
                return
            if not fresh:
                self.stats["duplicates"] += 1
                return
            t.progressed = True
            self.stats["chunks"] += 1
            if t.part.complete:
                self._verify(t)
            else:
                self._progress(t)

    # ---- control (any thread)

    def cancel(self, reason: str = "canceled") -> None:
        """Abandon the transfer in progress (its temp file is removed)."""
        with self._cond:
            if self._current is not None:
                self._end(self._current, "CANCELED", reason)

    def close(self) -> None:
        """Cancel what is in progress and stop the timer thread. Idempotent."""
        with self._cond:
            self.cancel("receiver closed")
            self._closed = True
            self._cond.notify_all()
            timer = self._timer
        if timer is not None and timer is not threading.current_thread():
            timer.join()

    @property
    def status(self) -> TransferStatus | None:
        """The latest status (None before the first manifest)."""
        with self._cond:
            return self._status

    def wait(self, timeout: float | None = None, model: str | None = None) -> TransferStatus:
        """The final status of the transfer (of ``model`` if given); TimeoutError if none comes in time."""
        def final() -> bool:
            s = self._status
            return s is not None and s.done and (model is None or s.model == model)
        with self._cond:
            if not self._cond.wait_for(final, timeout):
                raise TimeoutError(f"transfer not finished within {timeout} s (status: {self._status})")
            assert self._status is not None
            return self._status

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals (lock held)

    def _emit(self, status: TransferStatus) -> None:
        self._status = status
        self._cond.notify_all()
        if self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:  # boundary: a reporting callback never breaks the transfer
                log.exception("on_status callback failed for %s %s", status.model, status.state)

    def _status_of(self, t: _Transfer, state: State, reason: str = "", path: Path | None = None) -> TransferStatus:
        percent = 100.0 if state == "COMPLETE" else t.percent()
        return TransferStatus(t.manifest.model, state, percent, reason, t.manifest, path, t.part.received,
                              t.manifest.chunk_count)

    def _progress(self, t: _Transfer, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - t.last_emit >= self.progress_interval:
            t.last_emit = now
            self._emit(self._status_of(t, "DOWNLOADING"))

    def _refuse(self, reason: str) -> None:
        self.stats["rejected"] += 1
        self.rejections.append(reason)
        log.warning("refused: %s", reason)

    def _end(self, t: _Transfer, state: State, reason: str = "", path: Path | None = None) -> None:
        if state != "COMPLETE":
            t.part.discard()
        if self._current is t:
            self._current = None
        self.stats[{"COMPLETE": "completed", "FAILED": "failed", "CANCELED": "canceled"}[state]] += 1
        if state == "COMPLETE":
            log.info("received %s into %s", t.manifest.model, path)
        else:
            log.warning("transfer of %s %s: %s", t.manifest.model, state, reason)
        self._emit(self._status_of(t, state, reason, path))

    def _verify(self, t: _Transfer) -> None:
        self._emit(self._status_of(t, "VERIFYING"))
        m = t.manifest
        try:
            size, digest = t.part.digest()
            if size == m.size and digest == m.sha256:
                self._end(t, "COMPLETE", path=t.part.commit())
                return
        except OSError as exc:
            self._end(t, "FAILED", f"cannot verify or move the file into {t.part.dest}: {exc}")
            return
        reason = f"whole file sha256 {digest[:12]}... ({size} bytes) does not match the manifest's {m.sha256[:12]}..."
        self._refuse(f"{m.model}: {reason}")
        if t.restarts >= self.max_retries:
            self._end(t, "FAILED", f"{reason}, {t.restarts} full retries")
            return
        t.restarts += 1
        t.part.reset()
        t.progressed = False
        self._ask(t, None, reason)
        self._progress(t, force=True)

    def _ask(self, t: _Transfer, chunks: list[int] | None, reason: str) -> None:
        t.last_activity = time.monotonic()
        self.stats["requests"] += 1
        try:
            self._request(ChunkRequest(model=t.manifest.model, chunks=chunks, reason=reason[:200]))
        except Exception:  # boundary: a failed request is retried after the next quiet period
            log.exception("could not ask again for chunks of %s", t.manifest.model)

    def _check_quiet(self) -> None:
        t = self._current
        if t is None or time.monotonic() - t.last_activity < self.quiet_s:
            return
        t.fruitless = 0 if t.progressed else t.fruitless + 1
        t.progressed = False
        count, received = t.manifest.chunk_count, t.part.received
        if t.fruitless >= self.max_retries:
            self._end(t, "FAILED", f"{count - received} of {count} chunks still missing after "
                                   f"{t.fruitless} requests without an answer")
            return
        if received == 0:
            self._ask(t, None, f"nothing received for {self.quiet_s:.1f} s")
            return
        self._ask(t, t.part.missing(MAX_REQUEST_CHUNKS), f"{count - received} of {count} chunks missing or corrupt")

    # ---- the quiet timer (own thread)

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="fabbus-receiver-timer", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        interval = max(0.01, min(self.quiet_s / 4, 0.5))
        with self._cond:
            while not self._closed:
                self._cond.wait(interval)
                try:
                    self._check_quiet()
                except Exception:  # boundary: the timer thread never dies
                    log.exception("quiet-period check failed")

