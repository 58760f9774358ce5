"""Chunked file transfer over the bus: the sending side, and the public names of the protocol.

One protocol for the three flows (edge -> cloud upload, cloud -> edge fetch,
edge -> detector delivery): a ModelManifest, then ModelChunks (each with its
index and sha256); the receiver (fabbus.assembler.Receiver) answers with
ChunkRequests for what it lacks. This module does not know topic names: the
caller binds them in a publish callable, for instance with :func:`bus_publisher`::

    p = plan(bundle_path, chunk_size)
    manifest = ModelManifest(model="m1", brand="b1", **p.manifest_fields())
    publish = bus_publisher(client, "delivery_manifest", "delivery_chunk", det="d1", brand="b1")
    sender = Sender(bundle_path, manifest, publish)
    client.subscribe("delivery_request", sender.on_request, det="d1", brand="b1")
    sender.send()              # manifest, then every chunk; returns once the broker acknowledged all
    sender.serve(timeout=60)   # answer requests until sender.close() (e.g. on DeliveryStatus ACTIVE)

Sending keeps at most ``window`` QoS 1 publishes unacknowledged, so a large file
streams at the broker's pace with memory bounded to ``window`` chunks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabbus.acks import Delivery
from fabbus.assembler import Receiver, TransferStatus
from fabbus.chunks import (DEFAULT_CHUNK_SIZE, TransferError, TransferPlan, chunk_count, check_manifest, iter_chunks,
                           plan, read_chunk, remove_partials)
from fabbus.messages import ChunkRequest, ModelChunk, ModelManifest

__all__ = ["DEFAULT_CHUNK_SIZE", "DEFAULT_WINDOW", "Receiver", "Sender", "SendStats", "TransferError",
           "TransferPlan", "TransferStatus", "bus_publisher", "iter_chunks", "make_manifest", "plan",
           "remove_partials"]

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 16        # paho keeps at most 20 QoS 1 messages in flight by default
Publish = Callable[[ModelManifest | ModelChunk], Delivery]


def bus_publisher(client: Any, manifest_topic: str, chunk_topic: str, *, correlation_id: str | None = None,
                  **ids: str) -> Publish:
    """A publish callable for :class:`Sender`: manifests and chunks on their contract topics of a BusClient."""
    def publish(body: ModelManifest | ModelChunk) -> Delivery:
        topic = manifest_topic if isinstance(body, ModelManifest) else chunk_topic
        return client.publish(topic, body, correlation_id=correlation_id, **ids)
    return publish


def make_manifest(path: str | os.PathLike[str], *, model: str, brand: str, chunk_size: int = DEFAULT_CHUNK_SIZE,
                  **fields: Any) -> ModelManifest:
    """A manifest for a file: size, sha256 and chunking from :func:`plan`, the rest from ``fields``."""
    return ModelManifest(model=model, brand=brand, **plan(path, chunk_size).manifest_fields(), **fields)


@dataclass
class SendStats:
    manifests: int = 0
    chunks: int = 0
    resent: int = 0
    bytes: int = 0
    requests: int = 0
    seconds: float = 0.0


class Sender:
    """Sends one file: its manifest, its chunks, and again whatever the receiver asks for.

    ``publish(body) -> Delivery`` puts a manifest or chunk on the right topic.
    :meth:`on_request` is a bus handler: it only queues the request (it never blocks
    the dispatcher); the thread in :meth:`send` or :meth:`serve` publishes.
    """

    def __init__(self, path: str | os.PathLike[str], manifest: ModelManifest, publish: Publish, *,
                 window: int = DEFAULT_WINDOW, ack_timeout: float = 30.0) -> None:
        check_manifest(manifest)
        self.path = Path(path)
        size = self.path.stat().st_size
        if size != manifest.size:
            raise TransferError(f"{self.path} has {size} bytes, the manifest says {manifest.size}")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.manifest = manifest
        self.window = window
        self.ack_timeout = ack_timeout
        self.stats = SendStats()
        self._publish = publish
        self._cond = threading.Condition()
        self._wanted: set[int] = set()
        self._everything = False
        self._closed = False

    # ---- requests (any thread)

    def on_request(self, msg: Any) -> None:
        """Handler for ChunkRequest (a ReceivedMessage or the body): queue the chunks asked for."""
        req: ChunkRequest = getattr(msg, "body", msg)
        if req.model != self.manifest.model:
            log.debug("ignoring a request for model %s (sending %s)", req.model, self.manifest.model)
            return
        count = self.manifest.chunk_count
        with self._cond:
            self.stats.requests += 1
            if req.chunks is None:
                self._everything = True
            else:
                bad = [i for i in req.chunks if not 0 <= i < count]
                if bad:
                    log.warning("request for %s names chunks out of range [0, %s): %s", req.model, count, bad[:10])
                self._wanted.update(i for i in req.chunks if 0 <= i < count)
            self._cond.notify_all()
        log.info("%s: receiver asks for %s (%s)", self.manifest.model,
                 "everything" if req.chunks is None else f"{len(req.chunks)} chunk(s)", req.reason or "no reason")

    def close(self) -> None:
        """Stop serving: :meth:`serve` returns and a running :meth:`send` stops after its current chunk."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- sending (the caller's thread)

    def send(self) -> SendStats:
        """Publish the manifest (and wait for its acknowledgement), then every chunk, then what was asked for."""
        start = time.monotonic()
        with self._cond:
            self._everything, self._wanted = False, set()
        self._send_all()
        self._serve_pending()
        self.stats.seconds += time.monotonic() - start
        return self.stats

    def serve(self, timeout: float | None = None) -> bool:
        """Answer requests until :meth:`close` (True) or ``timeout`` seconds (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cond:
                left = None if deadline is None else deadline - time.monotonic()
                self._cond.wait_for(lambda: self._closed or self._everything or self._wanted, left)
                if self._closed:
                    return True
                if not (self._everything or self._wanted):
                    return False
            self._serve_pending()

    def _serve_pending(self) -> None:
        while not self._closed:
            with self._cond:
                everything, wanted = self._everything, sorted(self._wanted)
                self._everything, self._wanted = False, set()
            if everything:
                self._send_all()
            elif wanted:
                self._stream(self._chunks(wanted), resend=True)
            else:
                return

    def _send_all(self) -> None:
        self._publish(self.manifest).wait(self.ack_timeout)  # before the chunks, so it arrives first
        self.stats.manifests += 1
        self._stream(self._chunks(range(self.manifest.chunk_count)), resend=self.stats.chunks > 0)

    def _chunks(self, indices: Iterable[int]) -> Generator[ModelChunk, None, None]:
        m = self.manifest
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size != m.size or chunk_count(m.size, m.chunk_size) != m.chunk_count:
                raise TransferError(f"{self.path} changed size while being sent")
            for index in indices:
                yield self.make_chunk(fd, index)
        finally:
            os.close(fd)

    def make_chunk(self, fd: int, index: int) -> ModelChunk:
        """Chunk ``index`` as it goes on the bus (a test subclass may spoil it)."""
        return read_chunk(fd, self.manifest.model, index, self.manifest.chunk_size)

    def _stream(self, chunks: Generator[ModelChunk, None, None], *, resend: bool) -> None:
        inflight: deque[Delivery] = deque()
        with closing(iter(chunks)) as it:  # closes the file even when stopped early
            for chunk in it:
                if self._closed:
                    break
                inflight.append(self._publish(chunk))
                self.stats.chunks += 1
                self.stats.resent += resend
                self.stats.bytes += len(chunk.data)
                while len(inflight) >= self.window:
                    inflight.popleft().wait(self.ack_timeout)
        while inflight:
            inflight.popleft().wait(self.ack_timeout)

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
