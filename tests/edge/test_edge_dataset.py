"""The dataset cache, the deterministic split, the checks before training and the tf.data pipeline."""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from edge_support import CLASSES, TF_WARNINGS, config, write_images
from edge_node.dataset import Dataset, DatasetCache, Sample, check_data, class_weights, split
from edge_node.errors import CacheError, InvalidTrainingConfig
from edge_node.pipeline import batches, build_dataset

pytestmark = TF_WARNINGS


def _png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


# ---- cache

def test_cache_stores_by_content_and_verifies_sha256(tmp_path: Path) -> None:
    cache = DatasetCache(tmp_path / "cache")
    data = _png((10, 20, 30))
    digest = hashlib.sha256(data).hexdigest()
    s = cache.add(data, brand="acme", label="good", sha256=digest, source="det-1")
    assert s.path == tmp_path / "cache" / "acme" / "good" / f"{digest}.png"
    assert s.path.read_bytes() == data and cache.has(digest)
    assert cache.add(data, brand="acme", label="good") == s  # a second add is a no-op
    with pytest.raises(CacheError, match=r"labelled 'good': sha256 is [0-9a-f]{64}, expected 0{64}"):
        cache.add(_png((1, 2, 3)), brand="acme", label="good", sha256="0" * 64, source="det-1")
    with pytest.raises(CacheError, match="invalid label '../x'"):
        cache.add(data, brand="acme", label="../x")
    cache.add(_png((200, 0, 0)), brand="acme", label="spot")
    cache.add(_png((0, 200, 0)), brand="other", label="spot")
    assert Counter(s.label for s in cache.samples("acme")) == {"good": 1, "spot": 1}
    assert [s.label for s in cache.dataset("acme", classes=["spot"]).samples] == ["spot"]
    cache.close()
    reopened = DatasetCache(tmp_path / "cache")
    assert reopened.has(digest)
    reopened.close()


# ---- split

def _fake(n_per_class: dict[str, int]) -> Dataset:
    samples = [Sample(Path(f"/x/{c}/{i}.png"), c, hashlib.sha256(f"{c}{i}".encode()).hexdigest())
               for c, n in n_per_class.items() for i in range(n)]
    return Dataset(tuple(samples))


def test_split_is_stratified_deterministic_and_independent_of_order() -> None:
    data = _fake({"good": 50, "scratch": 20, "spot": 10})
    cfg = config(generators={"validation_split": 0.2, "test_split": 0.1, "seed": 7})
    a = split(data, cfg)
    b = split(Dataset(tuple(reversed(data.samples))), cfg)
    assert a == b
    assert Counter(s.label for s in a.validation) == {"good": 10, "scratch": 4, "spot": 2}
    assert Counter(s.label for s in a.test) == {"good": 5, "scratch": 2, "spot": 1}
    assert len(a.train) + len(a.validation) + len(a.test) == 80
    assert not {s.sha256 for s in a.train} & {s.sha256 for s in a.validation + a.test}
    other = split(data, config(generators={"validation_split": 0.2, "test_split": 0.1, "seed": 8}))
    assert other.validation != a.validation
    assert data.snapshot_id(CLASSES) == Dataset(tuple(reversed(data.samples))).snapshot_id(CLASSES)


def test_split_refuses_a_class_too_small_for_the_fractions() -> None:
    with pytest.raises(InvalidTrainingConfig, match=r"class 'spot' has 2 sample\(s\): too few .* \(needs at least 3\)"):
        split(_fake({"good": 10, "scratch": 10, "spot": 2}), config())


# ---- checks before training

def test_unknown_class_is_named(small_data: Dataset) -> None:
    with pytest.raises(InvalidTrainingConfig, match=r"unknown class\(es\) \['rust'\] in the training config; "
                                                    r"the line's detectors know \['good', 'scratch', 'spot'"):
        check_data(config(classes=["good", "rust"]), small_data, 16)


def test_class_without_samples_is_named(small_data: Dataset) -> None:
    with pytest.raises(InvalidTrainingConfig, match=r"class\(es\) \['dent'\] have no samples "
                                                    r"\(samples per class: \{'good': 20"):
        check_data(config(classes=["good", "dent"]), small_data, 16)


def test_images_below_the_architecture_minimum_are_refused(tmp_path: Path) -> None:
    data = Dataset.from_folder(write_images(tmp_path, ["good", "spot"], 6, size=24))
    cfg = config(classes=["good", "spot"], architecture="mobilenet_v2")
    with pytest.raises(InvalidTrainingConfig, match=r"is 24x24, smaller than the 32 px minimum of "
                                                    r"architecture mobilenet_v2"):
        check_data(cfg, data, 32)
    bad = data.samples[0].path
    bad.write_bytes(b"not an image")
    with pytest.raises(InvalidTrainingConfig, match=rf"image {bad} \(class 'good'\) cannot be read"):
        check_data(cfg, data, 16)


def test_config_shape_errors_come_from_the_config_itself() -> None:
    with pytest.raises(ValidationError, match="input_size"):
        config(input_size=16)
    with pytest.raises(ValidationError, match="epochs"):
        config(epochs=0)
    with pytest.raises(ValidationError, match="alpha .* applies to mobilenet_v2 only"):
        config(alpha=0.35)


def test_class_weights_explicit_and_balanced() -> None:
    train = list(_fake({"good": 30, "scratch": 10, "spot": 20}).samples)
    assert class_weights(config(), train) is None
    assert class_weights(config(generators={"class_weights": {"scratch": 3.0}}), train) == {0: 1.0, 1: 3.0, 2: 1.0}
    balanced = class_weights(config(generators={"class_weights": "balanced"}), train)
    assert balanced == pytest.approx({0: 60 / 90, 1: 60 / 30, 2: 60 / 60})


# ---- pipeline

def test_pipeline_shapes_normalisation_and_colour(small_data: Dataset) -> None:
    samples = small_data.samples[:10]
    x, y = next(iter(build_dataset(samples, config(), training=False)))
    assert x.shape == (8, 32, 32, 3) and y.dtype.name == "int32"
    assert 0.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
    expected = np.asarray(Image.open(samples[0].path).convert("RGB"), np.float32) / 255
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)

    cfg = config(input_size=48, preprocessing={"color_mode": "grayscale", "normalization": "standardize"})
    x, _ = next(iter(build_dataset(samples, cfg, training=False)))
    assert x.shape == (8, 48, 48, 1)
    assert np.allclose(np.mean(x.numpy(), axis=(1, 2, 3)), 0, atol=1e-4)
    assert np.allclose(np.std(x.numpy(), axis=(1, 2, 3)), 1, atol=1e-2)
    assert batches(len(small_data.samples), 8) == 8


def test_augmentation_only_on_training_and_shuffle_is_seeded(small_data: Dataset) -> None:
    samples = small_data.samples[::3][:16]  # all three classes
    aug = config(augmentation={"horizontal_flip": True, "vertical_flip": True, "rotation": 0.1, "zoom": 0.1,
                               "brightness": 0.2, "contrast": 0.2}, generators={"shuffle": False, "batch_size": 16})
    plain = next(iter(build_dataset(samples, aug, training=False)))[0].numpy()
    augmented = next(iter(build_dataset(samples, aug, training=True)))[0].numpy()
    assert augmented.shape == plain.shape and not np.allclose(augmented, plain)
    cfg = config(generators={"batch_size": 16, "seed": 3})
    order1 = next(iter(build_dataset(samples, cfg, training=True)))[1].numpy().tolist()
    order2 = next(iter(build_dataset(samples, cfg, training=True)))[1].numpy().tolist()
    assert order1 == order2
    unshuffled = next(iter(build_dataset(samples, cfg, training=False)))[1].numpy().tolist()
    assert sorted(order1) == sorted(unshuffled) and order1 != unshuffled


def test_resize_and_grayscale_match_what_detectors_do_with_pillow(tmp_path: Path) -> None:
    write_images(tmp_path, ["scratch"], 2, size=64)
    samples = Dataset.from_folder(tmp_path).samples
    for color_mode, mode in (("rgb", "RGB"), ("grayscale", "L")):
        cfg = config(input_size=48, preprocessing={"color_mode": color_mode}, generators={"batch_size": 2})
        x, _ = next(iter(build_dataset(samples, cfg, training=False)))
        for i, s in enumerate(samples):
            expected = np.asarray(Image.open(s.path).convert(mode).resize((48, 48), Image.Resampling.BILINEAR),
                                  np.float32).reshape(48, 48, -1) / 255
            assert np.abs(x[i].numpy() - expected).max() <= 1.01 / 255  # within one level of 255
