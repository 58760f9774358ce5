"""The tf.data input pipeline: decode, resize, colour mode, cache, shuffle, batch, augment, normalise.

    ds = build_dataset(splits.train, config, training=True)   # yields (float32 NHWC batch, int32 labels)

Order: decode + resize (parallel, per image) -> in-memory cache of uint8 pixels -> shuffle
(training only, seeded, reshuffled every epoch) -> batch -> augmentation (training only,
on 0..255 values) -> normalisation -> prefetch(AUTOTUNE). Augmentation lives in the
pipeline, never in the model, so the exported model is exactly what detectors run.

Preprocessing a detector must reproduce (also written to the bundle's meta.json):
RGB decode, ``grayscale`` = ITU-R 601 luma rounded to 8 bits (0.2989 R + 0.587 G + 0.114 B,
as Pillow's "L"), bilinear resize to ``input_size`` squared with antialiasing when shrinking
(as Pillow's BILINEAR: within one grey level), then ``rescale`` = x / 255 or ``standardize`` =
per image (x - mean) / max(std, 1 / sqrt(pixels * channels)) on 0..255 values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import tensorflow as tf

from edge_node.dataset import Sample
from fabbus.training_config import AugmentationConfig, TrainingConfig

AUTOTUNE = tf.data.AUTOTUNE


def channels(config: TrainingConfig) -> int:
    return 1 if config.preprocessing.color_mode == "grayscale" else 3


def batches(n: int, batch_size: int) -> int:
    """Batches per epoch for ``n`` samples (the last one may be partial)."""
    return math.ceil(n / batch_size)


def augmentation(aug: AugmentationConfig, seed: int) -> keras.Sequential | None:
    """Random layers for the configured augmentation, or None when there is none."""
    layers: list[keras.layers.Layer] = []
    flip = {(True, True): "horizontal_and_vertical", (True, False): "horizontal", (False, True): "vertical"}
    mode = flip.get((aug.horizontal_flip, aug.vertical_flip))
    if mode:
        layers.append(keras.layers.RandomFlip(mode, seed=seed))
    if aug.rotation:
        layers.append(keras.layers.RandomRotation(aug.rotation, fill_mode="reflect", seed=seed + 1))
    if aug.zoom:
        layers.append(keras.layers.RandomZoom((-aug.zoom, aug.zoom), fill_mode="reflect", seed=seed + 2))
    if aug.brightness:
        layers.append(keras.layers.RandomBrightness(aug.brightness, value_range=(0.0, 255.0), seed=seed + 3))
    if aug.contrast:
        layers.append(keras.layers.RandomContrast(aug.contrast, value_range=(0.0, 255.0), seed=seed + 4))
    return keras.Sequential(layers, name="augmentation") if layers else None


def build_dataset(samples: Sequence[Sample], config: TrainingConfig, *, training: bool,
                  cache: bool = True) -> tf.data.Dataset:
    """Batched (images, labels) of ``samples``; labels are indices into ``config.classes``."""
    index = {c: i for i, c in enumerate(config.classes)}
    paths = tf.constant([str(s.path) for s in samples], tf.string)
    labels = tf.constant([index[s.label] for s in samples], tf.int32)
    size, gray = config.input_size, config.preprocessing.color_mode == "grayscale"

    def load(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        img = tf.cast(img, tf.float32)
        if gray:
            img = tf.round(tf.image.rgb_to_grayscale(img))  # 8-bit luma, as Pillow's "L"
        img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
        return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8), label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels)).map(load, num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    gen = config.generators
    if training and gen.shuffle:
        ds = ds.shuffle(max(1, len(samples)), seed=gen.seed, reshuffle_each_iteration=True)
    ds = ds.batch(gen.batch_size)
    aug = augmentation(config.augmentation, gen.seed) if training else None
    normalization = config.preprocessing.normalization

    def prepare(images: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = tf.cast(images, tf.float32)
        if aug is not None:
            x = aug(x, training=True)
        return normalize(x, normalization), label

    return ds.map(prepare, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def normalize(x: tf.Tensor, normalization: str) -> tf.Tensor:
    """Pixels 0..255 (float) to model input."""
    if normalization == "standardize":
        return tf.image.per_image_standardization(x)
    return x * (1.0 / 255.0)
