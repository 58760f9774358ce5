"""Tiny real models for the detector tests: Keras CNNs converted to LiteRT and packed as bundles.

TensorFlow is imported here only (the detector itself never imports it). Each
distinct model is built and converted once per test session (about 0.5 s each).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from fabbus.model_bundle import BundleMeta, write_bundle

CLASSES = ["good", "scratch", "spot", "crack", "dent"]


@functools.cache
def tflite_cnn(input_shape: tuple[int, int, int] = (64, 64, 3), classes: int = len(CLASSES), seed: int = 0,
               softmax: bool = True) -> bytes:
    """A two-conv CNN as a LiteRT flatbuffer (random weights: the tests check plumbing, not accuracy)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(classes, activation="softmax" if softmax else None),
    ])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def garbage_tflite() -> bytes:
    """Passes the bundle's identifier check (TFL3) but is no flatbuffer LiteRT can load."""
    return b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 8


def make_bundle(path: Path, tflite: bytes | None = None, *, brand: str = "brandA", classes: list[str] | None = None,
                input_shape: tuple[int, int, int] = (64, 64, 3), color_mode: str = "rgb",
                normalization: str = "rescale", tag: float = 1.0) -> Path:
    """A bundle file; ``tag`` (created_at) makes otherwise equal bundles differ in sha256."""
    classes = classes or CLASSES
    if tflite is None:
        tflite = tflite_cnn(input_shape, len(classes))
    meta = BundleMeta(classes=classes, input_shape=input_shape, color_mode=color_mode, normalization=normalization,
                      architecture="tiny-cnn", brand=brand, created_at=tag)
    return write_bundle(path, tflite, meta)
