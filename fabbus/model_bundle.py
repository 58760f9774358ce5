"""The model file that travels: a zip with the LiteRT model, optionally the Keras model, and its metadata.

    bundle.zip
      meta.json      BundleMeta: format version, classes, input shape, preprocessing, brand, metrics
      model.tflite   LiteRT flatbuffer ("TFL3"): what detectors load
      model.keras    optional: for evaluation in the cloud and incremental training on the edge

    write_bundle(path, tflite_bytes, BundleMeta(...), keras_path="model.keras")
    bundle = read_bundle(path)      # BundleError with a precise reason for anything it refuses
    bundle.meta.classes, bundle.tflite

The archive is deterministic (fixed member order, timestamps and attributes, stored
without compression), so the same content always has the same sha256; writing is
atomic (temp file beside the target, fsync, os.replace).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fabbus.errors import FabError

FORMAT_VERSION = 1
META, TFLITE, KERAS = "meta.json", "model.tflite", "model.keras"
MEMBERS = (META, TFLITE, KERAS)
TFLITE_IDENTIFIER = b"TFL3"          # flatbuffer file identifier, bytes 4..8
MAX_META_BYTES = 256 * 1024
MAX_MODEL_BYTES = 1024 * 1024 * 1024
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)     # the earliest time a zip can hold: no clock in the hash
_LOCAL_HEADER = b"PK\x03\x04"
_COPY_BLOCK = 1024 * 1024


class BundleError(FabError):
    """A model bundle is unreadable or invalid; the message says what and where."""


class BundleMeta(BaseModel):
    """meta.json of a bundle: what a detector needs to feed the model and read its output."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    format_version: Literal[1] = FORMAT_VERSION
    classes: list[str] = Field(min_length=1)
    input_shape: tuple[int, int, int] = Field(description="[height, width, channels]")
    color_mode: Literal["rgb", "grayscale"]
    normalization: Literal["rescale", "standardize"]
    architecture: str = Field(min_length=1, max_length=64)
    brand: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    created_at: float = Field(ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> BundleMeta:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique: {self.classes}")
        if min(self.input_shape) < 1:
            raise ValueError(f"input_shape dimensions must be positive: {list(self.input_shape)}")
        channels = {"rgb": 3, "grayscale": 1}[self.color_mode]
        if self.input_shape[2] != channels:
            raise ValueError(f"color_mode {self.color_mode} needs {channels} channel(s), "
                             f"input_shape has {self.input_shape[2]}")
        return self


@dataclass(frozen=True)
class Bundle:
    """A read and checked bundle. The Keras model stays in the archive until extracted."""

    path: Path
    meta: BundleMeta
    tflite: bytes
    keras_size: int | None          # None when the bundle has no model.keras

    @property
    def has_keras(self) -> bool:
        return self.keras_size is not None

    def extract_keras(self, dest: str | os.PathLike[str]) -> Path:
        """Copy model.keras to ``dest`` (atomically, without holding it in memory)."""
        if self.keras_size is None:
            raise BundleError(f"{self.path}: the bundle has no {KERAS}")
        dest = Path(dest)
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(KERAS) as src:
                _atomic_write(dest, lambda out: shutil.copyfileobj(src, out, _COPY_BLOCK))
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BundleError(f"{self.path}: cannot extract {KERAS}: {exc}") from None
        return dest


def sha256_file(path: str | os.PathLike[str], block: int = _COPY_BLOCK) -> str:
    """The hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
    return h.hexdigest()


def check_tflite(data: bytes, where: str = TFLITE) -> None:
    """BundleError unless ``data`` looks like a TFLite flatbuffer (file identifier TFL3)."""
    if len(data) < 8:
        raise BundleError(f"{where} is not a TFLite flatbuffer: only {len(data)} bytes")
    if data[4:8] != TFLITE_IDENTIFIER:
        raise BundleError(f"{where} is not a TFLite flatbuffer: identifier {bytes(data[4:8])!r}, "
                          f"expected {TFLITE_IDENTIFIER!r}")


def write_bundle(path: str | os.PathLike[str], tflite: bytes, meta: BundleMeta,
                 keras_path: str | os.PathLike[str] | None = None) -> Path:
    """Write a bundle atomically; the same inputs always give the same bytes."""
    check_tflite(tflite, "the tflite model")
    if len(tflite) > MAX_MODEL_BYTES:
        raise BundleError(f"the tflite model has {len(tflite)} bytes, more than {MAX_MODEL_BYTES}")
    meta_bytes = (json.dumps(meta.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode()

    def fill(out: Any) -> None:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(_info(META, len(meta_bytes)), meta_bytes)
            zf.writestr(_info(TFLITE, len(tflite)), tflite)
            if keras_path is not None:
                info = _info(KERAS, os.path.getsize(keras_path))
                with open(keras_path, "rb") as src, zf.open(info, "w", force_zip64=info.file_size > 2**31) as dst:
                    shutil.copyfileobj(src, dst, _COPY_BLOCK)

    dest = Path(path)
    _atomic_write(dest, fill)
    return dest


def read_bundle(path: str | os.PathLike[str], *, max_model_bytes: int = MAX_MODEL_BYTES) -> Bundle:
    """Open and check a bundle; BundleError says precisely what is wrong."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise BundleError(f"{path}: empty file")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        if head == _LOCAL_HEADER:
            raise BundleError(f"{path}: truncated zip archive ({size} bytes, {exc})") from None
        raise BundleError(f"{path}: not a zip archive (starts with {head!r})") from None
    with zf:
        infos = _members(zf, path, max_model_bytes)
        meta = _read_meta(zf, infos[META], path)
        tflite = _read_member(zf, infos[TFLITE], path)
        check_tflite(tflite, f"{path}: {TFLITE}")
        keras = infos.get(KERAS)
        if keras is not None:
            _check_crc(zf, keras, path)
    return Bundle(path, meta, tflite, keras.file_size if keras is not None else None)


# ---- reading helpers

def _members(zf: zipfile.ZipFile, path: Path, max_model_bytes: int) -> dict[str, zipfile.ZipInfo]:
    infos: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if info.filename not in MEMBERS:
            raise BundleError(f"{path}: unexpected member {info.filename!r} (a bundle holds {list(MEMBERS)})")
        if info.filename in infos:
            raise BundleError(f"{path}: member {info.filename!r} appears twice")
        limit = MAX_META_BYTES if info.filename == META else max_model_bytes
        if info.file_size > limit:
            raise BundleError(f"{path}: {info.filename} has {info.file_size} bytes, more than the limit of {limit}")
        infos[info.filename] = info
    for required in (META, TFLITE):
        if required not in infos:
            raise BundleError(f"{path}: missing member {required} (found {sorted(infos) or 'none'})")
    return infos


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> bytes:
    """The member's bytes, at most its declared size (zip bombs stop there), CRC checked."""
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise BundleError(f"{path}: {info.filename} is truncated or corrupt: {exc}") from None
    if len(data) != info.file_size:
        raise BundleError(f"{path}: {info.filename} has {len(data)} bytes, the archive says {info.file_size}")
    return data


def _check_crc(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> None:
    try:
        with zf.open(info) as f:
            n = 0
            while block := f.read(_COPY_BLOCK):
                n += len(block)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, ValueError) as exc:
        raise BundleError(f"{path}: {info.filename} is truncated or corrupt: {exc}") from None
    if n != info.file_size:
        raise BundleError(f"{path}: {info.filename} has {n} bytes, the archive says {info.file_size}")


def _read_meta(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> BundleMeta:
    raw = _read_member(zf, info, path)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: {META} is not UTF-8 JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: {META} is not a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: unknown bundle format_version {version!r} (this reader knows {FORMAT_VERSION})")
    try:
        return BundleMeta.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                             for e in exc.errors()[:5])
        raise BundleError(f"{path}: bad {META}: {problems}") from None


# ---- writing helpers

def _info(name: str, size: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3                      # unix, whatever the platform
    info.external_attr = 0o100644 << 16         # a regular file, rw-r--r--
    info.file_size = size
    return info


def _atomic_write(dest: Path, fill: Any) -> None:
    """Call ``fill(file)`` on a temp file beside ``dest``, fsync it, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(dest.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
