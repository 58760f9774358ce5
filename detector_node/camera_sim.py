"""A camera simulator: images of product surfaces per brand, good or with a defect.

Each brand has a surface (brushed metal, matte plastic or woven fabric) and a base
colour derived from its name, unless given. A captured image is built in four
independent layers, each from its own random stream seeded by (seed, brand, seq):

1. the surface: base colour modulated by the brand's texture (random phase per image);
2. the defect, if any: ``scratch`` (thin bright or dark line), ``spot`` (irregular
   stain), ``crack`` (dark jagged branching path) or ``dent`` (a shaded depression
   lit from one side), with random position, size, orientation and contrast;
3. the lighting: exposure, vignetting and a linear illumination gradient;
4. the sensor: Gaussian noise, then quantisation to RGB uint8.

So ``capture(seq)`` is a pure function of (seed, brand, seq, size): the same bytes on
every call, and ``render(seq, label)`` for different labels gives the same product
under the same light, differing only by the defect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

GOOD = "good"
DEFECTS = ("scratch", "spot", "crack", "dent")
ALL_CLASSES = (GOOD, *DEFECTS)
TEXTURES = ("brushed", "matte", "woven")
Texture = Literal["brushed", "matte", "woven"]


class CameraConfig(BaseModel):
    """Simulated camera settings (one per station; the brand comes with each trigger)."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=64, ge=16, le=1024, description="square image side in pixels")
    seed: int = Field(default=0, ge=0)
    defect_rate: float = Field(default=0.3, ge=0.0, le=1.0, description="probability that a product is defective")
    classes: list[str] = Field(default_factory=lambda: list(ALL_CLASSES), min_length=1)

    @field_validator("classes")
    @classmethod
    def _known(cls, classes: list[str]) -> list[str]:
        unknown = [c for c in classes if c not in ALL_CLASSES]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known: {list(ALL_CLASSES)}")
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be unique")
        return classes


@dataclass(frozen=True)
class Surface:
    texture: Texture
    color: tuple[float, float, float]
    vertical: bool  # direction of brushing / of the weave's first thread


def _brand_key(brand: str) -> int:
    return int.from_bytes(hashlib.sha256(brand.encode()).digest()[:8], "big")


def surface_for(brand: str, texture: Texture | None = None) -> Surface:
    """The brand's surface: texture and colour derived from the brand name (stable across runs)."""
    h = hashlib.sha256(brand.encode()).digest()
    tex: Texture = texture or TEXTURES[h[0] % 3]  # type: ignore[assignment]
    if tex == "brushed":  # near-neutral greys with a slight tint
        grey = 0.55 + 0.2 * h[1] / 255
        color = tuple(grey + 0.06 * (h[2 + i] / 255 - 0.5) for i in range(3))
    else:  # moderately saturated colours
        color = tuple(0.3 + 0.45 * h[1 + i] / 255 for i in range(3))
    return Surface(tex, color, bool(h[4] & 1))  # type: ignore[arg-type]


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells+1) matrix that linearly interpolates a coarse grid to ``size`` samples."""
    pos = np.linspace(0, cells, size, dtype=np.float32)
    idx = np.minimum(pos.astype(int), cells - 1)
    frac = pos - idx
    m = np.zeros((size, cells + 1), np.float32)
    m[np.arange(size), idx] = 1 - frac
    m[np.arange(size), idx + 1] = frac
    return m


def _smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Value noise in [-1, 1]: a random (cells_y+1, cells_x+1) grid, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, (cells_y + 1, cells_x + 1)).astype(np.float32)
    return _interp_matrix(size, cells_y) @ grid @ _interp_matrix(size, cells_x).T


@lru_cache(maxsize=16)
def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return y, x


def _texture(rng: np.random.Generator, surface: Surface, size: int) -> np.ndarray:
    """Relative brightness modulation (around 1.0) of the surface."""
    y, x = _coords(size)
    if surface.texture == "brushed":
        streaks = _smooth_noise(rng, size, size - 1, 2) * 0.07  # random across, smooth along
        sheen = 0.08 * np.cos(2 * np.pi * (x / size * rng.uniform(0.5, 1.2) + rng.uniform()))
        mod = streaks + sheen + rng.normal(0, 0.01, (size, size)).astype(np.float32)
        if surface.vertical:
            mod = mod.T
    elif surface.texture == "matte":
        mod = _smooth_noise(rng, size, 4, 4) * 0.05 + rng.normal(0, 0.025, (size, size)).astype(np.float32)
    else:
        period = max(4.0, size / 10)
        u = (x + rng.uniform(0, period)) / period
        v = (y + rng.uniform(0, period)) / period
        checker = (np.floor(u) + np.floor(v)) % 2 == (1 if surface.vertical else 0)
        weave = np.where(checker, np.sin(np.pi * u) ** 2, np.sin(np.pi * v) ** 2)
        mod = 0.16 * (weave - 0.5) + _smooth_noise(rng, size, 3, 3) * 0.03
    return 1.0 + mod


def _segment_distance(y: np.ndarray, x: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    t = np.clip(((y - p0[0]) * d[0] + (x - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
    return np.hypot(y - (p0[0] + t * d[0]), x - (p0[1] + t * d[1]))


def _polyline_mask(size: int, points: Sequence[np.ndarray], width: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a polyline of the given half-width in pixels."""
    y, x = _coords(size)
    dist = np.full((size, size), np.inf, np.float32)
    for p0, p1 in zip(points, points[1:]):
        dist = np.minimum(dist, _segment_distance(y, x, p0, p1))
    return np.clip(width + 0.5 - dist, 0, 1)


def _center(rng: np.random.Generator, size: int, margin: float = 0.18) -> np.ndarray:
    return rng.uniform(margin * size, (1 - margin) * size, 2).astype(np.float32)


def _scratch(rng, albedo, size):
    c = _center(rng, size)
    angle = rng.uniform(0, np.pi)
    half = rng.uniform(0.18, 0.4) * size
    bend = rng.uniform(-0.06, 0.06) * size
    d = np.array([np.sin(angle), np.cos(angle)], np.float32)
    n = np.array([d[1], -d[0]], np.float32)
    pts = [c - half * d, c + bend * n, c + half * d]
    mask = _polyline_mask(size, pts, rng.uniform(0.35, 0.8) * size / 64)
    sign = 1 if rng.random() < 0.6 else -1
    return albedo * (1 + sign * rng.uniform(0.35, 0.6) * mask)[..., None]


def _spot(rng, albedo, size):
    y, x = _coords(size)
    c = _center(rng, size)
    r = rng.uniform(0.05, 0.12) * size
    blob = np.exp(-(((y - c[0]) ** 2 + (x - c[1]) ** 2) / (2 * r * r)))
    irregular = 1 + 0.5 * _smooth_noise(rng, size, 6, 6)
    mask = np.clip((blob * irregular - 0.35) * 3, 0, 1)
    dark = rng.random() < 0.7 or float(albedo.mean()) > 0.55  # a light stain only on a dark surface
    stain = np.array(rng.uniform(0.05, 0.35, 3) if dark else rng.uniform(0.75, 1.0, 3), np.float32)
    a = rng.uniform(0.55, 0.85) * mask[..., None]
    return albedo * (1 - a) + stain * a


def _crack(rng, albedo, size):
    pts = [_center(rng, size)]
    angle = rng.uniform(0, 2 * np.pi)
    step = size / rng.uniform(10, 16)
    for _ in range(int(rng.integers(5, 10))):
        angle += rng.uniform(-0.9, 0.9)
        pts.append(np.clip(pts[-1] + step * np.array([np.sin(angle), np.cos(angle)], np.float32), 1, size - 2))
    width = rng.uniform(0.3, 0.6) * size / 64
    mask = _polyline_mask(size, pts, width)
    k = int(rng.integers(1, len(pts) - 1))  # a branch from a middle vertex
    a2 = angle + rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.4)
    tip = np.clip(pts[k] + 2.5 * step * np.array([np.sin(a2), np.cos(a2)], np.float32), 1, size - 2)
    mask = np.maximum(mask, _polyline_mask(size, [pts[k], tip], width * 0.7))
    return albedo * (1 - rng.uniform(0.55, 0.8) * mask)[..., None]


def _dent(rng, albedo, size):
    y, x = _coords(size)
    c = _center(rng, size)
    r = rng.uniform(0.08, 0.16) * size
    dy, dx = (y - c[0]) / r, (x - c[1]) / r
    bump = np.exp(-(dy * dy + dx * dx))
    light = rng.uniform(0, 2 * np.pi)
    # slope of a Gaussian depression, projected on the light direction: bright rim on one side, dark on the other
    shade = 2 * bump * (dy * np.sin(light) + dx * np.cos(light)) / 0.86
    return albedo * (1 + rng.uniform(0.3, 0.5) * shade - 0.1 * bump)[..., None]


_DEFECT_FUNCS = {"scratch": _scratch, "spot": _spot, "crack": _crack, "dent": _dent}


def _lighting(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = _coords(size)
    u, v = y / size - 0.5, x / size - 0.5
    vignette = 1 - rng.uniform(0.1, 0.45) * (u * u + v * v) * 2
    a = rng.uniform(0, 2 * np.pi)
    gradient = 1 + rng.uniform(0.0, 0.25) * (u * np.sin(a) + v * np.cos(a))
    return rng.uniform(0.85, 1.15) * vignette * gradient


class CameraSimulator:
    """Deterministic camera: ``capture(seq)`` → (RGB uint8 image of shape (size, size, 3), label)."""

    def __init__(
        self,
        brand: str,
        size: int = 64,
        seed: int = 0,
        defect_rate: float = 0.3,
        classes: Sequence[str] = ALL_CLASSES,
        texture: Texture | None = None,
    ) -> None:
        cfg = CameraConfig(size=size, seed=seed, defect_rate=defect_rate, classes=list(classes))
        self.brand = brand
        self.size = cfg.size
        self.seed = cfg.seed
        self.defect_rate = cfg.defect_rate
        self.classes = tuple(cfg.classes)
        self.defects = tuple(c for c in self.classes if c != GOOD)
        self.surface = surface_for(brand, texture)
        self._key = _brand_key(brand)

    @classmethod
    def from_config(cls, brand: str, config: CameraConfig) -> CameraSimulator:
        return cls(brand, config.size, config.seed, config.defect_rate, config.classes)

    def _rng(self, seq: int, stream: int) -> np.random.Generator:
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        return np.random.default_rng([self.seed, self._key, seq, stream])

    def label_of(self, seq: int) -> str:
        """The ground-truth label of product ``seq``."""
        rng = self._rng(seq, 0)
        u, pick = rng.random(), rng.random()
        if not self.defects or (GOOD in self.classes and u >= self.defect_rate):
            return GOOD
        return self.defects[int(pick * len(self.defects))]

    def capture(self, seq: int) -> tuple[np.ndarray, str]:
        label = self.label_of(seq)
        return self.render(seq, label), label

    def render(self, seq: int, label: str) -> np.ndarray:
        """Product ``seq`` with the given label (any known class, even one not in ``classes``)."""
        if label not in ALL_CLASSES:
            raise ValueError(f"unknown label {label!r}; known: {list(ALL_CLASSES)}")
        size = self.size
        albedo = np.asarray(self.surface.color, np.float32) * _texture(self._rng(seq, 1), self.surface, size)[..., None]
        if label != GOOD:
            albedo = _DEFECT_FUNCS[label](self._rng(seq, 2), albedo, size)
        rng = self._rng(seq, 3)
        img = albedo * _lighting(rng, size)[..., None] * rng.uniform(0.96, 1.04, 3).astype(np.float32)
        img += rng.normal(0, rng.uniform(0.006, 0.02), img.shape).astype(np.float32)
        return np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
