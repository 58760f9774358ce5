"""Model files over the bus, cloud side: uploads from edges in, fetches by edges out.

Uploads: one fabbus Receiver per (site, line, upload id), writing straight into the
content-addressed store (the manifest names the sha256). When a transfer ends, a
finisher thread (never the bus handler) registers the model, enqueues its evaluation
and publishes a TransferResult on ``model_upload_result``: ACCEPTED with the version,
or REJECTED with the reason (a whole-file hash that never matched, an invalid bundle,
an unknown brand). A manifest for a model this line already has is answered at once.

Fetches: a ChunkRequest on ``model_fetch_request`` for a registered model id (its
sha256) starts a fabbus Sender on ``model_fetch_manifest`` / ``model_fetch_chunk`` in
its own thread; it answers that edge's requests for ``transfer.serve_s`` seconds. An
unknown model gets a TransferResult REJECTED on ``model_fetch_manifest``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from sqlalchemy import or_, select

from fabbus.client import BusClient, ReceivedMessage
from fabbus.messages import ChunkRequest, ModelManifest, TransferResult
from fabbus.transfer import Receiver, Sender, TransferError, TransferStatus, bus_publisher, make_manifest

from cloud_app.errors import CloudError
from cloud_app.fleet import discover_node, find_line
from cloud_app.models import Line, ModelVersion, Task
from cloud_app.registry import register_upload

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from cloud_app.backend import Backend

log = logging.getLogger(__name__)

Key = tuple[str, str, str]   # site, line, model id


class Uploads:
    def __init__(self, backend: Backend, bus: BusClient) -> None:
        self.backend, self.bus = backend, bus
        self._lock = threading.Lock()
        self._receivers: dict[Key, Receiver] = {}
        self._finished: queue.SimpleQueue[tuple[Key, Receiver, TransferStatus] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._finish_loop, name="cloud-upload-finisher", daemon=True)
        self.stats = {"accepted": 0, "rejected": 0}

    def start(self) -> None:
        self._thread.start()

    def on_manifest(self, rm: ReceivedMessage) -> None:
        m: ModelManifest = rm.body  # type: ignore[assignment]
        key = (rm.ids["site"], rm.ids["line"], rm.ids["model"])
        known = self._registered(key, m)
        if known is not None:
            self._result(key, "ACCEPTED", f"already registered as v{known}", known)
            return
        with self._lock:
            rx = self._receivers.get(key)
            if rx is None:
                rx = self._receivers[key] = self._receiver(key)
        rx.on_manifest(rm)

    def on_chunk(self, rm: ReceivedMessage) -> None:
        with self._lock:
            rx = self._receivers.get((rm.ids["site"], rm.ids["line"], rm.ids["model"]))
        if rx is not None:
            rx.on_chunk(rm)

    def _receiver(self, key: Key) -> Receiver:
        site, line, model = key
        t = self.backend.config.transfer
        holder: list[Receiver] = []

        def request(req: ChunkRequest) -> None:
            self.bus.publish("model_upload_request", req, site=site, line=line, model=model)

        def on_status(status: TransferStatus) -> None:
            if status.done and holder:
                self._finished.put((key, holder[0], status))  # handled outside the receiver's lock

        rx = Receiver(lambda m: self.backend.store.path_for(m.sha256), request=request, on_status=on_status,
                      quiet_s=t.quiet_s, max_retries=t.max_retries, max_size=t.max_model_bytes)
        holder.append(rx)
        return rx

    def _registered(self, key: Key, m: ModelManifest) -> int | None:
        with self.backend.db.session(readonly=True) as s:
            mv = s.scalar(select(ModelVersion).join(Line, ModelVersion.line_id == Line.id)
                          .where(ModelVersion.sha256 == m.sha256, ModelVersion.brand == m.brand,
                                 Line.key == f"{key[0]}/{key[1]}"))
            return mv.version if mv is not None and self.backend.store.has(m.sha256) else None

    def _finish_loop(self) -> None:
        while (item := self._finished.get()) is not None:
            key, rx, status = item
            try:
                self._finish(key, status)
            except Exception:  # boundary: the finisher thread never dies
                log.exception("could not finish the upload %s", key)
            finally:
                with self._lock:
                    if self._receivers.get(key) is rx:
                        del self._receivers[key]
                rx.close()

    def _finish(self, key: Key, status: TransferStatus) -> None:
        site, line, model = key
        if status.state == "CANCELED":
            log.info("upload %s/%s %s canceled: %s", site, line, model, status.reason)
            return
        if status.state != "COMPLETE" or status.manifest is None or status.path is None:
            self._result(key, "REJECTED", status.reason or f"transfer {status.state}")
            return
        try:
            with self.backend.db.session() as s:
                if self.backend.config.fleet.discover:
                    discover_node(s, "edge", site=site, line=line)
                mv, created = register_upload(s, self.backend.store, find_line(s, f"{site}/{line}"),
                                              status.manifest, status.path)
                version_id, version = mv.id, mv.version
        except CloudError as exc:
            self._discard(status)
            self._result(key, "REJECTED", exc.message)
            return
        if created:
            try:
                self.backend.tasks.evaluate(version_id)
            except Exception:  # boundary: the queue is down; the follower enqueues it later
                log.exception("could not enqueue the evaluation of model version %s", version_id)
        self._result(key, "ACCEPTED", f"registered as {site}/{line} {status.manifest.brand} v{version}", version)

    def _discard(self, status: TransferStatus) -> None:
        """Remove a refused file unless a registered version uses the same content."""
        if status.path is None or status.manifest is None:
            return
        with self.backend.db.session(readonly=True) as s:
            used = s.scalar(select(ModelVersion.id).where(ModelVersion.sha256 == status.manifest.sha256).limit(1))
        if used is None:
            status.path.unlink(missing_ok=True)

    def _result(self, key: Key, state: str, reason: str, version: int | None = None) -> None:
        site, line, model = key
        self.stats["accepted" if state == "ACCEPTED" else "rejected"] += 1
        log.log(logging.INFO if state == "ACCEPTED" else logging.WARNING, "upload %s/%s %s %s: %s", site, line,
                model, state, reason)
        body = TransferResult(model=model, state=state, reason=reason[:1000], version=version)  # type: ignore[arg-type]
        self.bus.publish("model_upload_result", body, site=site, line=line, model=model)

    def close(self) -> None:
        with self._lock:
            receivers, self._receivers = list(self._receivers.values()), {}
        for rx in receivers:
            rx.close()
        if self._thread.is_alive():
            self._finished.put(None)
            self._thread.join()


def fetchable_version(s: Session, line: str, model: str) -> ModelVersion:
    """The registry version of ``model`` that line ``line``'s edge may fetch: one registered for that line,
    or another line's that one of this line's tasks names (a deployment's version, a training's
    base_model). Models stay within the lines that use them; anything else is a CloudError."""
    rows = list(s.scalars(select(ModelVersion).where(ModelVersion.sha256 == model).order_by(ModelVersion.id)))
    if not rows:
        raise CloudError(f"unknown model {model!r}: not in the registry")
    mine = next((r for r in rows if r.line.key == line), None)
    if mine is not None:
        return mine
    named = s.scalar(select(Task.id).join(Line, Task.line_id == Line.id).where(
        Line.key == line, or_(Task.base_model == model, Task.model_version_id.in_([r.id for r in rows]))).limit(1))
    if named is None:
        raise CloudError(f"model {model!r} is not line {line}'s: no task of that line names it")
    return rows[0]


class Fetches:
    def __init__(self, backend: Backend, bus: BusClient) -> None:
        self.backend, self.bus = backend, bus
        self._lock = threading.Lock()
        self._senders: dict[Key, tuple[Sender, threading.Thread]] = {}
        self.stats = {"served": 0, "refused": 0}

    def on_request(self, rm: ReceivedMessage) -> None:
        key = (rm.ids["site"], rm.ids["line"], rm.ids["model"])
        with self._lock:
            running = self._senders.get(key)
        if running is not None and not running[0].closed:
            running[0].on_request(rm)
            return
        try:
            sender = self._sender(key)
        except (CloudError, TransferError, OSError) as exc:
            reason = exc.message if isinstance(exc, CloudError) else str(exc)
            self.stats["refused"] += 1
            log.warning("fetch of %s by %s/%s refused: %s", key[2], key[0], key[1], reason)
            body = TransferResult(model=key[2], state="REJECTED", reason=reason[:1000])
            self.bus.publish("model_fetch_manifest", body, site=key[0], line=key[1], model=key[2])
            return
        sender.on_request(rm)
        thread = threading.Thread(target=self._serve, args=(key, sender), name=f"cloud-fetch-{key[2][:12]}",
                                  daemon=True)
        with self._lock:
            self._senders[key] = (sender, thread)
        self.stats["served"] += 1
        thread.start()

    def _sender(self, key: Key) -> Sender:
        site, line, model = key
        with self.backend.db.session(readonly=True) as s:
            mv = fetchable_version(s, f"{site}/{line}", model)
            path = self.backend.store.abspath(mv.path)
            if not path.is_file():
                raise CloudError(f"model {model!r} is registered but its file is missing")
            manifest = make_manifest(path, model=model, brand=mv.brand,
                                     chunk_size=self.backend.config.transfer.chunk_size, version=mv.version,
                                     classes=list(mv.classes), input_shape=list(mv.input_shape), task=mv.task_id,
                                     base_model=mv.base_model, data_snapshot=mv.data_snapshot, metrics=mv.metrics,
                                     created_at=mv.created_at)
        if manifest.sha256 != model:
            raise CloudError(f"stored file of model {model!r} does not match its sha256")
        return Sender(path, manifest, bus_publisher(self.bus, "model_fetch_manifest", "model_fetch_chunk",
                                                    site=site, line=line, model=model))

    def _serve(self, key: Key, sender: Sender) -> None:
        try:
            sender.serve(timeout=self.backend.config.transfer.serve_s)
        except Exception:  # boundary: a failed fetch never takes the listener down
            log.exception("serving %s to %s/%s failed", key[2], key[0], key[1])
        finally:
            sender.close()
            with self._lock:
                if key in self._senders and self._senders[key][0] is sender:
                    del self._senders[key]

    def close(self) -> None:
        with self._lock:
            running, self._senders = list(self._senders.values()), {}
        for sender, _ in running:
            sender.close()
        for _, thread in running:
            thread.join()
