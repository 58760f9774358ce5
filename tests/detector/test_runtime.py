"""LiteRT runner: loading validates (with precise reasons), preprocessing follows the bundle's meta."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabbus.model_bundle import BundleMeta
from detector_node.camera_sim import CameraSimulator
from detector_node.model_store import ModelEntry, sha256_file
from detector_node.runtime import InferenceError, ModelLoadError, check_scores, load_runner, preprocess
from tiny_models import CLASSES, garbage_tflite, make_bundle, tflite_cnn


def load(path: Path, **kw):  # noqa: ANN201
    entry = ModelEntry(path.name, "m1", 1, sha256_file(path))
    return load_runner("brandA", path, entry, **{"image_size": 64, "classes": CLASSES, "ok_class": "good", **kw})


def meta(**kw) -> BundleMeta:  # noqa: ANN003
    base = {"classes": CLASSES, "input_shape": (64, 64, 3), "color_mode": "rgb", "normalization": "rescale",
            "architecture": "x", "brand": "brandA", "created_at": 0}
    return BundleMeta(**{**base, **kw})


def test_infer_gives_label_probabilities_and_latency(tmp_path: Path) -> None:
    runner = load(make_bundle(tmp_path / "m.zip"))
    image, _ = CameraSimulator("brandA").capture(1)
    result = runner.infer(image)
    assert result.label in CLASSES and result.label == CLASSES[result.index]
    assert result.scores.shape == (5,) and abs(float(result.scores.sum()) - 1) < 1e-3
    assert 0 < result.latency_s < 1


def test_grayscale_standardized_model(tmp_path: Path) -> None:
    path = make_bundle(tmp_path / "g.zip", tflite_cnn((64, 64, 1)), input_shape=(64, 64, 1), color_mode="grayscale",
                       normalization="standardize")
    image, _ = CameraSimulator("brandA").capture(2)
    assert load(path).infer(image).scores.shape == (5,)


def test_preprocess_matches_pillow_and_normalizations() -> None:
    image, _ = CameraSimulator("brandA", size=80).capture(3)
    x = preprocess(image, meta(color_mode="grayscale", input_shape=(64, 64, 1)))
    resized = Image.fromarray(image).convert("L").resize((64, 64), Image.Resampling.BILINEAR)
    assert x.shape == (1, 64, 64, 1)
    np.testing.assert_allclose(x[0, ..., 0], np.asarray(resized, np.float32) / 255, atol=1e-6)
    rgb = preprocess(image, meta())
    expected = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR), np.float32) / 255
    np.testing.assert_allclose(rgb[0], expected, atol=1e-6)
    z = preprocess(image, meta(normalization="standardize", input_shape=(80, 80, 3)))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3


@pytest.mark.parametrize("case, reason", [
    ("not_a_bundle", "not a valid model bundle: .*not a zip archive"),
    ("truncated", "not a valid model bundle: bad.zip: truncated zip archive"),
    ("garbage_tflite", "LiteRT cannot load model.tflite"),
    ("wrong_input_shape", r"wrong input shape: model.tflite takes \[1, 32, 32, 3\], meta.json says \[1, 64, 64, 3\]"),
    ("station_size", "model input size 32x32 does not match the station's image size 64x64"),
    ("other_brand", "the bundle is for brand 'brandB', not 'brandA'"),
    ("classes", "differ from the brand's configured classes"),
    ("no_ok_class", "lack the OK class 'good'"),
    ("wrong_outputs", r"wrong output shape: model.tflite gives \[1, 3\], 5 classes need \[1, 5\]"),
    ("logits", "probe inference failed: output is not a probability distribution"),
])
def test_bad_models_are_refused_with_a_precise_reason(tmp_path: Path, case: str, reason: str) -> None:
    path = tmp_path / "bad.zip"
    kw = {}
    if case == "not_a_bundle":
        path.write_bytes(b"MZ this is an executable, not a model" * 10)
    elif case == "truncated":
        data = make_bundle(path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "garbage_tflite":
        make_bundle(path, garbage_tflite())
    elif case == "wrong_input_shape":
        make_bundle(path, tflite_cnn((32, 32, 3)))
    elif case == "station_size":
        make_bundle(path, tflite_cnn((32, 32, 3)), input_shape=(32, 32, 3))
    elif case == "other_brand":
        make_bundle(path, brand="brandB")
    elif case == "classes":
        make_bundle(path, tflite_cnn(classes=3), classes=["good", "scratch", "spot"])
    elif case == "no_ok_class":
        make_bundle(path, classes=["ok", "scratch", "spot", "crack", "dent"])
        kw = {"classes": None}
    elif case == "wrong_outputs":
        make_bundle(path, tflite_cnn(classes=3))
    elif case == "logits":
        make_bundle(path, tflite_cnn(softmax=False))
    with pytest.raises(ModelLoadError, match=reason):
        load(path, **kw)


def test_check_scores() -> None:
    check_scores(np.array([0.25, 0.75], np.float32), 2)
    for bad, why in [([np.nan, 1.0], "not finite"), ([0.5, 0.6], "not a probability"), ([1.0], "shape")]:
        with pytest.raises(InferenceError, match=why):
            check_scores(np.array(bad, np.float32), 2)


def test_the_detector_never_imports_tensorflow() -> None:
    code = ("import sys, detector_node.__main__, detector_node.node, detector_node.runtime; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf_keras')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
