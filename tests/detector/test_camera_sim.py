from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import ValidationError

from detector_node.camera_sim import ALL_CLASSES, DEFECTS, GOOD, CameraConfig, CameraSimulator, surface_for

BRANDS = [("brandA", None), ("brandB", "brushed"), ("cloth", "woven"), ("tray", "matte")]


def test_same_seed_brand_index_gives_identical_bytes():
    a, b = CameraSimulator("brandA", 64, seed=5), CameraSimulator("brandA", 64, seed=5)
    for seq in range(20):
        (img_a, label_a), (img_b, label_b) = a.capture(seq), b.capture(seq)
        assert img_a.tobytes() == img_b.tobytes()
        assert label_a == label_b
    # out of order and repeated: still a pure function of the index
    assert a.capture(3)[0].tobytes() == b.capture(3)[0].tobytes() == a.capture(3)[0].tobytes()


def test_seed_brand_and_index_change_the_image():
    base = CameraSimulator("brandA", 64, seed=5).render(1, GOOD)
    assert not np.array_equal(base, CameraSimulator("brandA", 64, seed=6).render(1, GOOD))
    assert not np.array_equal(base, CameraSimulator("brandB", 64, seed=5).render(1, GOOD))
    assert not np.array_equal(base, CameraSimulator("brandA", 64, seed=5).render(2, GOOD))


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_image_is_rgb_uint8_of_the_configured_size(size):
    img, label = CameraSimulator("brandA", size).capture(0)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert label in ALL_CLASSES
    assert 20 < img.mean() < 235 and img.std() > 1  # exposed, not flat


def test_brands_get_stable_distinct_surfaces():
    assert surface_for("brandA") == surface_for("brandA")
    assert {surface_for(b, t).texture for b, t in BRANDS[1:]} == {"brushed", "woven", "matte"}
    means = [CameraSimulator(b, 64, texture=t).render(0, GOOD).reshape(-1, 3).mean(0) for b, t in BRANDS]
    assert min(np.abs(m1 - m2).max() for i, m1 in enumerate(means) for m2 in means[i + 1 :]) > 3


def test_labels_follow_the_defect_rate_and_classes():
    cam = CameraSimulator("brandA", 32, seed=1, defect_rate=0.3)
    labels = [cam.label_of(i) for i in range(2000)]
    defect_share = sum(label != GOOD for label in labels) / len(labels)
    assert 0.25 < defect_share < 0.35
    assert set(labels) == set(ALL_CLASSES)
    assert {CameraSimulator("b", 32, defect_rate=0.0).label_of(i) for i in range(200)} == {GOOD}
    only = CameraSimulator("b", 32, defect_rate=0.5, classes=["good", "spot"])
    assert {only.label_of(i) for i in range(200)} == {GOOD, "spot"}
    assert {CameraSimulator("b", 32, classes=["dent", "crack"]).label_of(i) for i in range(200)} == {"dent", "crack"}


def _defect_mask(cam: CameraSimulator, seq: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    diff = cam.render(seq, label).astype(int).mean(2) - cam.render(seq, GOOD).astype(int).mean(2)
    return diff, np.abs(diff) > 12


@pytest.mark.parametrize(("brand", "texture"), BRANDS)
def test_defects_are_visible_local_and_varied(brand, texture):
    cam = CameraSimulator(brand, 64, seed=2, texture=texture)
    assert np.array_equal(cam.render(4, GOOD), cam.render(4, GOOD))
    for label in DEFECTS:
        centres, areas = [], []
        for seq in range(25):
            diff, mask = _defect_mask(cam, seq, label)
            assert np.abs(diff).max() >= 20, (label, seq)  # visible
            assert 0.002 < mask.mean() < 0.3, (label, seq)  # local
            ys, xs = np.nonzero(mask)
            centres.append((ys.mean(), xs.mean()))
            areas.append(mask.sum())
        assert np.std(np.array(centres), axis=0).min() > 5, label  # varied position
        assert max(areas) > 1.5 * min(areas), label  # varied size


def test_defect_classes_differ_measurably():
    cam = CameraSimulator("brandA", 64, seed=3)
    fill, bright, dark = {}, {}, {}
    for label in DEFECTS:
        f, b, d = [], [], []
        for seq in range(30):
            diff, mask = _defect_mask(cam, seq, label)
            ys, xs = np.nonzero(mask)
            f.append(mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
            b.append((diff > 12).any())
            d.append((diff < -12).any())
        fill[label], bright[label], dark[label] = np.median(f), np.mean(b), np.mean(d)
    assert fill["scratch"] < 0.35 and fill["crack"] < 0.35  # thin lines
    assert fill["spot"] > 0.5 and fill["dent"] > 0.45  # compact blobs
    assert bright["crack"] == 0 and dark["crack"] == 1  # cracks are dark
    assert bright["dent"] == 1 and dark["dent"] == 1  # dents: a lit side and a shadow side
    assert 0 < bright["scratch"] < 1  # scratches: bright or dark


def _highpass_peak(img: np.ndarray, k: int = 9) -> float:
    lum = img.astype(np.float32).mean(2)
    c = np.pad(np.pad(lum, k // 2, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    blur = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    return float(np.abs(lum - blur).max())


@pytest.mark.parametrize(("brand", "texture"), BRANDS[1:])
def test_single_images_separate_good_from_defective(brand, texture):
    """Without the paired good image: even one hand-made feature ranks defects above goods (AUC)."""
    cam = CameraSimulator(brand, 64, seed=4, texture=texture)
    good = np.array([_highpass_peak(cam.render(s, GOOD)) for s in range(40)])
    for label in DEFECTS:
        bad = np.array([_highpass_peak(cam.render(s, label)) for s in range(40)])
        auc = (good[:, None] < bad[None, :]).mean()
        assert auc > 0.85, (label, auc)


def test_capture_is_fast_at_64px():
    cam = CameraSimulator("brandA", 64)
    cam.capture(0)
    start = time.perf_counter()
    for seq in range(100):
        cam.capture(seq)
    assert (time.perf_counter() - start) / 100 < 0.01  # measured ~0.5 ms; generous for a shared CI box


def test_bad_settings_are_refused():
    with pytest.raises(ValidationError):
        CameraSimulator("b", classes=["good", "smudge"])
    with pytest.raises(ValidationError):
        CameraConfig(size=64, colour="red")
    with pytest.raises(ValueError, match="seq"):
        CameraSimulator("b").capture(-1)
    with pytest.raises(ValueError, match="unknown label"):
        CameraSimulator("b").render(0, "smudge")
