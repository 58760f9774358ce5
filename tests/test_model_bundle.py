"""The model bundle (fabbus.model_bundle): a real tiny Keras model, its LiteRT conversion, and corrupt bundles.

The Keras model is built and converted in a subprocess (TensorFlow stays out of the
test process, as it stays out of detectors); the bundle is read back and its
model.tflite run with LiteRT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fabbus.model_bundle import (META, TFLITE, BundleError, BundleMeta, read_bundle, sha256_file,
                                 write_bundle)

_BUILD = """
import os, sys, warnings
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
warnings.simplefilter("ignore")
import keras, tensorflow as tf
out = sys.argv[1]
model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                          keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                          keras.layers.Dense(3, activation="softmax")])
model.save(os.path.join(out, "model.keras"))
with open(os.path.join(out, "model.tflite"), "wb") as f:
    f.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
"""


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    """(tflite bytes, path of the .keras file) of a tiny real CNN."""
    out = tmp_path_factory.mktemp("keras")
    subprocess.run([sys.executable, "-c", _BUILD, str(out)], check=True, capture_output=True, timeout=240,
                   stdin=subprocess.DEVNULL)
    return (out / "model.tflite").read_bytes(), out / "model.keras"


def meta(**kw: object) -> BundleMeta:
    fields: dict[str, object] = {"classes": ["ok", "scratch", "spot"], "input_shape": [16, 16, 3],
                                 "color_mode": "rgb", "normalization": "rescale", "architecture": "small_cnn",
                                 "brand": "b1", "created_at": 1764312000.0, "metrics": {"accuracy": 0.93}}
    return BundleMeta(**{**fields, **kw})


FAKE_TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def meta_bytes(**changes: object) -> bytes:
    return json.dumps({**meta().model_dump(mode="json"), **changes}).encode()


# ---- round trip with a real model -------------------------------------------------------------

def test_round_trip_with_a_real_keras_model(keras_model: tuple[bytes, Path], tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    tflite, keras_path = keras_model
    path = write_bundle(tmp_path / "params" / "b1" / "m1.zip", tflite, meta(), keras_path=keras_path)
    assert sorted(os.listdir(path.parent)) == ["m1.zip"]            # no temp file left behind
    bundle = read_bundle(path)
    assert bundle.meta == meta() and bundle.tflite == tflite and bundle.has_keras
    assert bundle.keras_size == keras_path.stat().st_size
    extracted = bundle.extract_keras(tmp_path / "out" / "model.keras")
    assert sha256_file(extracted) == sha256_file(keras_path)

    interpreter = Interpreter(model_content=bundle.tflite)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert list(inp["shape"][1:]) == list(bundle.meta.input_shape)
    interpreter.set_tensor(inp["index"], np.random.default_rng(0).random((1, 16, 16, 3), dtype=np.float32) * 255)
    interpreter.invoke()
    probs = interpreter.get_tensor(out["index"])
    assert probs.shape == (1, len(bundle.meta.classes)) and abs(float(probs.sum()) - 1.0) < 1e-4


def test_same_content_same_hash_and_atomic_replace(keras_model: tuple[bytes, Path], tmp_path: Path) -> None:
    tflite, keras_path = keras_model
    a = write_bundle(tmp_path / "a.zip", tflite, meta(), keras_path=keras_path)
    os.utime(keras_path, (1, 1))                                    # file times never reach the archive
    b = write_bundle(tmp_path / "b.zip", tflite, meta(), keras_path=keras_path)
    assert sha256_file(a) == sha256_file(b)
    write_bundle(a, tflite, meta(metrics={"accuracy": 0.5}))       # replaces the existing file
    assert read_bundle(a).meta.metrics == {"accuracy": 0.5} and not read_bundle(a).has_keras
    assert sha256_file(a) != sha256_file(b)
    assert sorted(os.listdir(tmp_path)) == ["a.zip", "b.zip"]          # no temp files


def test_write_refuses_a_model_that_is_not_tflite(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a TFLite flatbuffer"):
        write_bundle(tmp_path / "x.zip", b"PK\x03\x04 a keras zip, not a flatbuffer", meta())
    assert not list(tmp_path.iterdir())


def test_bundle_without_keras_cannot_extract_it(tmp_path: Path) -> None:
    bundle = read_bundle(write_bundle(tmp_path / "m.zip", FAKE_TFLITE, meta()))
    with pytest.raises(BundleError, match="has no model.keras"):
        bundle.extract_keras(tmp_path / "k.keras")


# ---- meta validation --------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "reason"), [
    ({"color_mode": "grayscale"}, "needs 1 channel"),
    ({"classes": ["ok", "ok"]}, "unique"),
    ({"classes": []}, "at least 1"),
    ({"input_shape": [16, 16]}, "input_shape"),
    ({"normalization": "none"}, "normalization"),
    ({"owner": "x"}, "Extra inputs are not permitted"),
])
def test_meta_refuses_inconsistent_fields(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        meta(**changes)


# ---- corrupt bundles --------------------------------------------------------------------------

def test_random_bytes_are_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(BundleError, match="not a zip archive"):
        read_bundle(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty.zip").write_bytes(b"")
    with pytest.raises(BundleError, match="empty file"):
        read_bundle(tmp_path / "empty.zip")
    with pytest.raises(BundleError, match="cannot read"):
        read_bundle(tmp_path / "absent.zip")


def test_truncated_zip(tmp_path: Path) -> None:
    good = write_bundle(tmp_path / "m.zip", FAKE_TFLITE, meta()).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(BundleError, match="truncated zip archive"):
        read_bundle(cut)


def test_corrupt_member_fails_its_crc(tmp_path: Path) -> None:
    data = bytearray(write_bundle(tmp_path / "m.zip", FAKE_TFLITE, meta()).read_bytes())
    at = data.find(bytes(range(256)))
    data[at + 10] ^= 0xFF
    (tmp_path / "bad.zip").write_bytes(data)
    with pytest.raises(BundleError, match="model.tflite is truncated or corrupt"):
        read_bundle(tmp_path / "bad.zip")


@pytest.mark.parametrize(("members", "reason"), [
    ({META: meta_bytes()}, "missing member model.tflite"),
    ({TFLITE: FAKE_TFLITE}, "missing member meta.json"),
    ({META: meta_bytes(owner="me"), TFLITE: FAKE_TFLITE}, r"bad meta.json: owner: Extra inputs are not permitted"),
    ({META: meta_bytes(format_version=2), TFLITE: FAKE_TFLITE}, "unknown bundle format_version 2"),
    ({META: meta_bytes(input_shape=[16, 16, 1]), TFLITE: FAKE_TFLITE}, "needs 3 channel"),
    ({META: b"{not json", TFLITE: FAKE_TFLITE}, "meta.json is not UTF-8 JSON"),
    ({META: b"[1, 2]", TFLITE: FAKE_TFLITE}, "meta.json is not a JSON object"),
    ({META: meta_bytes(), TFLITE: b"PK\x03\x04keras zip"}, r"model.tflite is not a TFLite flatbuffer: identifier"),
    ({META: meta_bytes(), TFLITE: b"TFL"}, "only 3 bytes"),
    ({META: meta_bytes(), TFLITE: FAKE_TFLITE, "../evil.sh": b"x"}, "unexpected member '../evil.sh'"),
])
def test_bad_members_are_refused(tmp_path: Path, members: dict[str, bytes], reason: str) -> None:
    with pytest.raises(BundleError, match=reason):
        read_bundle(write_zip(tmp_path / "x.zip", members))


def test_member_sizes_are_bounded(tmp_path: Path) -> None:
    path = write_bundle(tmp_path / "m.zip", FAKE_TFLITE, meta())
    with pytest.raises(BundleError, match=r"model.tflite has 1032 bytes, more than the limit of 1000"):
        read_bundle(path, max_model_bytes=1000)
    with pytest.raises(BundleError, match="meta.json has .* bytes, more than the limit"):
        read_bundle(write_zip(tmp_path / "big.zip", {META: b" " * 300_000, TFLITE: FAKE_TFLITE}))
