"""Running a brand's model with LiteRT (never TensorFlow): load, validate, preprocess, infer.

    runner = load_runner("brandA", path, entry, image_size=64, classes=["good", "scratch"], ok_class="good")
    result = runner.infer(image)        # RGB uint8 (H, W, 3) -> Inference(label, scores, latency_s)

Loading validates, in this order, and raises :class:`ModelLoadError` with a precise
reason at the first problem: the file is a model bundle (fabbus.model_bundle); it is
for this brand; its classes are the brand's configured classes and include the OK
class; its input size is the station's image size; LiteRT loads the flatbuffer
(XNNPACK delegate, ``num_threads``); the tflite input is float32 of shape
``[1, *meta.input_shape]`` and the output ``[1, len(classes)]``; a probe inference
gives finite probabilities (each in [0, 1], summing to 1).

Preprocessing follows the bundle's meta, in edge_node.pipeline's order: grayscale by
ITU-R 601-2 luma (Pillow's "L"), resize to the input size when the frame differs
(bilinear), then ``rescale`` (x / 255) or ``standardize`` (per image:
(x - mean) / max(std, 1/sqrt(N)), as ``tf.image.per_image_standardization``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from fabbus.model_bundle import MAX_MODEL_BYTES, BundleError, BundleMeta, read_bundle

from detector_node.errors import DetectorError
from detector_node.model_store import ModelEntry

log = logging.getLogger(__name__)

PROB_TOLERANCE = 1e-3


class ModelLoadError(DetectorError):
    """A model that cannot serve this station; the message is the reason."""


class InferenceError(DetectorError):
    """An inference produced no valid output (not finite, not probabilities, wrong length)."""


@dataclass(frozen=True)
class Inference:
    label: str
    index: int
    scores: np.ndarray  # one probability per class, in the meta's class order
    latency_s: float  # preprocessing and inference


def _luma(image: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L conversion, exactly: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16."""
    rgb = image.astype(np.uint32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16)[..., None]


def preprocess(image: np.ndarray, meta: BundleMeta) -> np.ndarray:
    """An RGB uint8 frame as the model's input: float32 of shape (1, H, W, C)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InferenceError(f"expected an RGB uint8 frame (H, W, 3), got {image.dtype} {image.shape}")
    h, w, _ = meta.input_shape
    if meta.color_mode == "grayscale":  # luma first, then resize: the edge's order (edge_node.pipeline)
        image = _luma(image).astype(np.uint8)
    if image.shape[:2] != (h, w):
        pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)  # mode L or RGB from the shape
        image = np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR)).reshape(h, w, -1)
    x = image.astype(np.float32)
    if meta.normalization == "rescale":
        x *= np.float32(1 / 255)
    else:
        x -= x.mean()
        x /= max(float(x.std()), 1.0 / np.sqrt(x.size))
    return x[None]


def check_scores(scores: np.ndarray, n: int) -> None:
    """InferenceError unless ``scores`` are ``n`` finite probabilities summing to 1."""
    if scores.shape != (n,):
        raise InferenceError(f"output has shape {list(scores.shape)}, expected [{n}]")
    if not np.all(np.isfinite(scores)):
        raise InferenceError(f"output is not finite: {np.array2string(scores, precision=3)}")
    total = float(scores.sum())
    if scores.min() < -PROB_TOLERANCE or scores.max() > 1 + PROB_TOLERANCE or abs(total - 1) > PROB_TOLERANCE:
        raise InferenceError(f"output is not a probability distribution (sum {total:.4f}, "
                             f"range [{scores.min():.3f}, {scores.max():.3f}])")


class ModelRunner:
    """One loaded model of a brand. ``infer`` is serialised by a lock (a LiteRT interpreter is not thread-safe)."""

    def __init__(self, brand: str, entry: ModelEntry, meta: BundleMeta, interpreter: Interpreter) -> None:
        self.brand = brand
        self.entry = entry
        self.meta = meta
        self.classes = tuple(meta.classes)
        self._interp = interpreter
        self._input = interpreter.get_input_details()[0]["index"]
        self._output = interpreter.get_output_details()[0]["index"]
        self._lock = threading.Lock()

    def infer(self, image: np.ndarray) -> Inference:
        start = time.perf_counter()
        x = preprocess(image, self.meta)
        with self._lock:
            self._interp.set_tensor(self._input, x)
            self._interp.invoke()
            scores = self._interp.get_tensor(self._output)[0].copy()
        latency = time.perf_counter() - start
        check_scores(scores, len(self.classes))
        index = int(np.argmax(scores))
        return Inference(self.classes[index], index, scores, latency)

    def __repr__(self) -> str:
        return f"ModelRunner({self.brand} {self.entry.model} v{self.entry.version} {self.entry.sha256[:12]})"


def _check_meta(brand: str, meta: BundleMeta, image_size: int, classes: list[str] | None, ok_class: str | None) -> None:
    if meta.brand != brand:
        raise ModelLoadError(f"the bundle is for brand {meta.brand!r}, not {brand!r}")
    if classes is not None and set(meta.classes) != set(classes):
        raise ModelLoadError(f"model classes {meta.classes} differ from the brand's configured classes {classes}")
    if ok_class is not None and ok_class not in meta.classes:
        raise ModelLoadError(f"model classes {meta.classes} lack the OK class {ok_class!r}")
    if tuple(meta.input_shape[:2]) != (image_size, image_size):
        raise ModelLoadError(f"model input size {meta.input_shape[0]}x{meta.input_shape[1]} does not match the "
                             f"station's image size {image_size}x{image_size}")


def _open_interpreter(tflite: bytes, meta: BundleMeta, num_threads: int) -> Interpreter:
    try:
        interp = Interpreter(model_content=tflite, num_threads=num_threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"LiteRT cannot load model.tflite: {str(exc).strip()[:300]}") from None
    inputs, outputs = interp.get_input_details(), interp.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(f"model has {len(inputs)} inputs and {len(outputs)} outputs, expected 1 and 1")
    want = [1, *meta.input_shape]
    got = [int(d) for d in inputs[0]["shape"]]
    if got != want:
        raise ModelLoadError(f"wrong input shape: model.tflite takes {got}, meta.json says {want}")
    if inputs[0]["dtype"] != np.float32 or outputs[0]["dtype"] != np.float32:
        raise ModelLoadError(f"unsupported tensor types: input {np.dtype(inputs[0]['dtype']).name}, "
                             f"output {np.dtype(outputs[0]['dtype']).name} (float32 expected)")
    out_shape = [int(d) for d in outputs[0]["shape"]]
    if out_shape != [1, len(meta.classes)]:
        raise ModelLoadError(f"wrong output shape: model.tflite gives {out_shape}, "
                             f"{len(meta.classes)} classes need [1, {len(meta.classes)}]")
    return interp


def load_runner(brand: str, path: Path, entry: ModelEntry, *, image_size: int, classes: list[str] | None = None,
                ok_class: str | None = None, num_threads: int = 1, probe: np.ndarray | None = None,
                max_model_bytes: int = MAX_MODEL_BYTES) -> ModelRunner:
    """Load and validate a bundle for ``brand``; ModelLoadError with the reason if it cannot serve."""
    start, path = time.perf_counter(), Path(path)
    try:
        bundle = read_bundle(path, max_model_bytes=max_model_bytes)
    except BundleError as exc:
        raise ModelLoadError(f"not a valid model bundle: {str(exc).replace(str(path), path.name)}") from None
    _check_meta(brand, bundle.meta, image_size, classes, ok_class)
    runner = ModelRunner(brand, entry, bundle.meta, _open_interpreter(bundle.tflite, bundle.meta, num_threads))
    if probe is None:
        probe = np.full((image_size, image_size, 3), 128, np.uint8)
    try:
        runner.infer(probe)
    except InferenceError as exc:
        raise ModelLoadError(f"probe inference failed: {exc}") from None
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"probe inference raised: {str(exc).strip()[:300]}") from None
    log.info("%s: loaded %s v%s (%s, %s, %s) in %.1f ms", brand, entry.model, entry.version,
             bundle.meta.architecture, list(bundle.meta.input_shape), bundle.meta.normalization,
             (time.perf_counter() - start) * 1000)
    return runner
