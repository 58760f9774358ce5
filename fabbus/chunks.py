"""Cutting a file into chunks for the bus, and the checks both ends apply to manifests and chunks.

    p = plan("bundle.zip", 256 * 1024)           # size, sha256, chunk_size, chunk_count
    manifest = ModelManifest(model="m1", brand="b1", **p.manifest_fields())
    for chunk in iter_chunks("bundle.zip", p.chunk_size, "m1"):
        ...                                      # ModelChunk(model, index, sha256, data)

Chunk ``i`` covers bytes ``[i * chunk_size, min(size, (i + 1) * chunk_size))``: every
chunk is exactly ``chunk_size`` long except the last. These functions are pure file
work; fabbus.transfer sends them, and fabbus.assembler checks them and writes them
into a :class:`PartFile`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabbus.errors import FabError
from fabbus.messages import ModelChunk, ModelManifest
from fabbus.model_bundle import fsync_dir

DEFAULT_CHUNK_SIZE = 256 * 1024          # best or near best in bench.transfer_bench on both brokers
MIN_CHUNK_SIZE = 1024                  # ModelManifest's lower bound
MAX_CHUNK_SIZE = 2 * 1024 * 1024       # base64 and the envelope must stay under the client's 4 MB payload limit
MAX_TRANSFER_BYTES = 2 * 1024 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class TransferError(FabError):
    """A manifest, chunk or file that a transfer refuses; the message is the reason."""


@dataclass(frozen=True)
class TransferPlan:
    """How a file travels: its size and hash, and how it is cut."""

    size: int
    sha256: str
    chunk_size: int
    chunk_count: int

    def manifest_fields(self) -> dict[str, Any]:
        """The ModelManifest fields this plan fixes."""
        return {"size": self.size, "sha256": self.sha256, "chunk_size": self.chunk_size,
                "chunk_count": self.chunk_count}


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def check_chunk_size(chunk_size: int) -> int:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise TransferError(f"chunk_size {chunk_size} outside [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    return chunk_size


def plan(path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> TransferPlan:
    """Size, sha256 and chunking of a file (read once, in chunk-sized blocks)."""
    check_chunk_size(chunk_size)
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(max(chunk_size, 1024 * 1024)):
            h.update(block)
            size += len(block)
    if size == 0:
        raise TransferError(f"{path}: empty file, nothing to transfer")
    return TransferPlan(size, h.hexdigest(), chunk_size, chunk_count(size, chunk_size))


def read_chunk(fd: int, model: str, index: int, chunk_size: int) -> ModelChunk:
    """Chunk ``index`` of the open file ``fd``."""
    data = os.pread(fd, chunk_size, index * chunk_size)
    return ModelChunk(model=model, index=index, sha256=hashlib.sha256(data).hexdigest(), data=data)


def iter_chunks(path: str | os.PathLike[str], chunk_size: int, model: str,
                indices: Iterable[int] | None = None) -> Iterator[ModelChunk]:
    """The file's chunks in order (or only ``indices``), one at a time: memory stays at one chunk."""
    check_chunk_size(chunk_size)
    fd = os.open(path, os.O_RDONLY)
    try:
        count = chunk_count(os.fstat(fd).st_size, chunk_size)
        for index in range(count) if indices is None else indices:
            if not 0 <= index < count:
                raise TransferError(f"chunk index {index} out of range [0, {count})")
            yield read_chunk(fd, model, index, chunk_size)
    finally:
        os.close(fd)


def check_manifest(m: ModelManifest, *, max_size: int = MAX_TRANSFER_BYTES,
                   max_chunk_size: int = MAX_CHUNK_SIZE) -> None:
    """TransferError with the reason when a manifest is inconsistent or beyond the limits."""
    if not _SHA256.match(str(m.sha256)):
        raise TransferError(f"manifest sha256 {str(m.sha256)[:80]!r} is not 64 lowercase hex digits")
    if not isinstance(m.size, int) or m.size < 1:
        raise TransferError(f"manifest size {m.size!r} is not a positive integer")
    if m.size > max_size:
        raise TransferError(f"manifest size {m.size} exceeds the limit of {max_size} bytes")
    if not MIN_CHUNK_SIZE <= m.chunk_size <= max_chunk_size:
        raise TransferError(f"manifest chunk_size {m.chunk_size} outside [{MIN_CHUNK_SIZE}, {max_chunk_size}]")
    expected = chunk_count(m.size, m.chunk_size)
    if m.chunk_count != expected:
        raise TransferError(f"manifest chunk_count {m.chunk_count} does not match size {m.size} and chunk_size "
                            f"{m.chunk_size} (expected {expected})")


def check_chunk(m: ModelManifest, c: ModelChunk) -> None:
    """TransferError with the reason when a chunk does not fit its manifest or its own hash."""
    if not 0 <= c.index < m.chunk_count:
        raise TransferError(f"chunk index {c.index} out of range [0, {m.chunk_count})")
    if len(c.data) > m.chunk_size:
        raise TransferError(f"chunk {c.index} has {len(c.data)} bytes, more than chunk_size {m.chunk_size}")
    expected = expected_length(m, c.index)
    if len(c.data) != expected:
        raise TransferError(f"chunk {c.index} has {len(c.data)} bytes, expected {expected}")
    digest = hashlib.sha256(c.data).hexdigest()
    if digest != c.sha256:
        raise TransferError(f"chunk {c.index} is corrupt: sha256 {digest[:12]}..., announced {c.sha256[:12]}...")


def expected_length(m: ModelManifest, index: int) -> int:
    return m.chunk_size if index < m.chunk_count - 1 else m.size - (m.chunk_count - 1) * m.chunk_size


def same_file(a: ModelManifest, b: ModelManifest) -> bool:
    """True when two manifests describe the same transfer (a repeated manifest)."""
    return (a.model, a.sha256, a.size, a.chunk_size) == (b.model, b.sha256, b.size, b.chunk_size)


class PartFile:
    """A pre-allocated temp file beside ``dest`` that chunks are written into, then renamed into place.

    Only a bitmap of received chunks stays in memory. The temp file is named
    ``.<dest name>.<random>.part``; :func:`remove_partials` clears leftovers after a crash.
    """

    def __init__(self, manifest: ModelManifest, dest: Path) -> None:
        self.manifest, self.dest = manifest, dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self.fd, self.tmp = fd, Path(tmp)
        try:
            try:
                os.posix_fallocate(fd, 0, manifest.size)
            except OSError as exc:  # not every file system can pre-allocate; a full disk is an error
                if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                    raise
                os.ftruncate(fd, manifest.size)
        except BaseException:
            self.discard()
            raise
        self.reset()

    def reset(self) -> None:
        """Forget every chunk (they will all be written again)."""
        self.have = bytearray(self.manifest.chunk_count)
        self.received = self.bytes = 0

    @property
    def complete(self) -> bool:
        return self.received == self.manifest.chunk_count

    def write(self, chunk: ModelChunk) -> bool:
        """Write a checked chunk at its offset; False if it was already there."""
        if self.have[chunk.index]:
            return False
        os.pwrite(self.fd, chunk.data, chunk.index * self.manifest.chunk_size)
        self.have[chunk.index] = 1
        self.received += 1
        self.bytes += len(chunk.data)
        return True

    def missing(self, limit: int) -> list[int]:
        """The first ``limit`` indices not received yet."""
        out: list[int] = []
        i = self.have.find(0)
        while i >= 0 and len(out) < limit:
            out.append(i)
            i = self.have.find(0, i + 1)
        return out

    def digest(self) -> tuple[int, str]:
        """fsync, then (size, sha256) of what is on disk."""
        os.fsync(self.fd)
        size, h, offset = os.fstat(self.fd).st_size, hashlib.sha256(), 0
        while offset < size:
            block = os.pread(self.fd, min(1024 * 1024, size - offset), offset)
            if not block:
                break
            h.update(block)
            offset += len(block)
        return size, h.hexdigest()

    def commit(self) -> Path:
        """Close and rename atomically into ``dest`` (durable once this returns)."""
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.dest)
        fsync_dir(self.dest.parent)
        return self.dest

    def discard(self) -> None:
        """Close and delete the temp file. Idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


def remove_partials(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temp files that an interrupted transfer (a power cut) left in ``directory``."""
    removed = []
    for p in Path(directory).glob(".*.part"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
