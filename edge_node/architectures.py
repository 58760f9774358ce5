"""The models the edge trains: a feature extractor named ``base`` plus a small classification head.

    model = build_model(config, start_from=None)   # start_from: the model file pretrained.source names

    image -> base (small_cnn | MobileNetV2 | EfficientNetB0, include_top=False)
          -> global pooling "pool" (max for small_cnn, average for the others)
          -> Dropout "dropout" -> Dense softmax "predictions"

small_cnn: three blocks of Conv2D 3x3 (16, 32, 64 filters) + BatchNormalization + ReLU + MaxPool.

Weights are never downloaded. ``pretrained.source``:
- ``none``: random initialisation;
- ``file``: a weights file of the base (``.weights.h5`` or a legacy ``.h5`` such as Keras'
  ``*_no_top.h5``), or a ``.keras`` model / model bundle whose ``base`` is reused;
- ``deployed``: the line's current model for the brand; ``base_model``: the registry model the
  task names (the caller fetched it). Either is a bundle or ``.keras`` file given by the caller
  as ``start_from``: its base is reused and, when the classes are the same, its head too.
Anything that does not fit the architecture is an InvalidTrainingConfig naming the file.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import keras

from edge_node.errors import InvalidTrainingConfig
from fabbus.model_bundle import BundleError, read_bundle
from fabbus.training_config import TrainingConfig

log = logging.getLogger(__name__)

MIN_INPUT_SIZE = {"small_cnn": 16, "mobilenet_v2": 32, "efficientnet_b0": 32}
BASE, HEAD = "base", "predictions"


def min_input_size(architecture: str) -> int:
    return MIN_INPUT_SIZE[architecture]


def input_shape(config: TrainingConfig) -> tuple[int, int, int]:
    return (config.input_size, config.input_size, 1 if config.preprocessing.color_mode == "grayscale" else 3)


def check_input_size(config: TrainingConfig) -> None:
    minimum = min_input_size(config.architecture)
    if config.input_size < minimum:
        raise InvalidTrainingConfig(f"input_size {config.input_size} is below the minimum {minimum} "
                                    f"of architecture {config.architecture}")


def build_base(config: TrainingConfig) -> keras.Model:
    """The feature extractor, randomly initialised."""
    shape = input_shape(config)
    if config.architecture == "small_cnn":
        layers: list[keras.layers.Layer] = [keras.Input(shape)]
        for filters in (16, 32, 64):
            layers += [keras.layers.Conv2D(filters, 3, padding="same", use_bias=False),
                       keras.layers.BatchNormalization(momentum=0.9),  # settles within a few dozen batches
                       keras.layers.ReLU(), keras.layers.MaxPooling2D()]
        return keras.Sequential(layers, name=BASE)
    if config.architecture == "mobilenet_v2":
        return keras.applications.MobileNetV2(input_shape=shape, alpha=config.alpha, include_top=False,
                                              weights=None, name=BASE)
    return keras.applications.EfficientNetB0(input_shape=shape, include_top=False, weights=None, name=BASE)


def build_model(config: TrainingConfig, start_from: str | Path | None = None) -> keras.Model:
    """The full model, with pretrained weights loaded as the config asks."""
    check_input_size(config)
    source, path = config.pretrained.source, Path(config.pretrained.path or "")
    donor: tuple[keras.Model, list[str] | None] | None = None
    if source == "file" and path.suffix in (".keras", ".zip"):
        donor = load_donor(path, config)
    elif source in ("deployed", "base_model"):
        if start_from is None:
            raise InvalidTrainingConfig(missing_start(source))
        path = Path(start_from)
        donor = load_donor(path, config)
    base = build_base(config)
    if source == "file" and donor is None:
        load_base_weights(base, path, config)
    model = _assemble(base, config)
    if donor is not None:
        _copy_from(donor, model, config, path)
    return model


def missing_start(source: str) -> str:
    if source == "deployed":
        return "pretrained.source is 'deployed' but the line has no deployed model for this brand"
    return "pretrained.source is 'base_model' but the base model's file is not on the edge"


def _assemble(base: keras.Model, config: TrainingConfig) -> keras.Model:
    inputs = keras.Input(input_shape(config), name="image")
    # With fine-tuning, the base's BatchNormalization stays in inference mode (Keras' transfer-learning guide).
    x = base(inputs, training=False) if config.fine_tune.enabled else base(inputs)
    # A defect is local: small_cnn keeps the strongest response anywhere; the applications pool as they were designed.
    small = config.architecture == "small_cnn"
    x = (keras.layers.GlobalMaxPooling2D if small else keras.layers.GlobalAveragePooling2D)(name="pool")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    outputs = keras.layers.Dense(len(config.classes), activation="softmax", name=HEAD)(x)
    return keras.Model(inputs, outputs, name=config.architecture)


def load_base_weights(base: keras.Model, path: Path, config: TrainingConfig) -> None:
    if not path.is_file():
        raise InvalidTrainingConfig(f"weights file {path} not found")
    try:
        with warnings.catch_warnings():  # Keras warns per layer before it raises; the error says it all
            warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
            base.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise InvalidTrainingConfig(f"weights file {path} does not fit architecture {_describe(config)}: "
                                    f"{_brief(exc)}") from None


def load_donor(path: Path, config: TrainingConfig) -> tuple[keras.Model, list[str] | None]:
    """A model to reuse (a bundle with model.keras, or a .keras file) and its classes when known."""
    if not path.is_file():
        raise InvalidTrainingConfig(f"pretrained model {path} not found")
    classes: list[str] | None = None
    try:
        if path.suffix == ".zip":
            bundle = read_bundle(path)
            if not bundle.has_keras:
                raise InvalidTrainingConfig(f"model bundle {path} has no model.keras: it cannot be trained further")
            classes = list(bundle.meta.classes)
            if bundle.meta.architecture != config.architecture:
                raise InvalidTrainingConfig(f"pretrained model {path} is a {bundle.meta.architecture}, the training "
                                            f"config asks for {config.architecture}")
            with tempfile.TemporaryDirectory() as tmp:
                model = _load_keras(bundle.extract_keras(Path(tmp) / "model.keras"))
        else:
            model = _load_keras(path)
    except InvalidTrainingConfig:
        raise
    except BundleError as exc:
        raise InvalidTrainingConfig(f"pretrained model: {exc}") from None
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise InvalidTrainingConfig(f"pretrained model {path} cannot be loaded: {_brief(exc)}") from None
    return model, classes


def _load_keras(path: Path) -> keras.Model:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"keras\.")
        return keras.models.load_model(path, compile=False)


def _copy_from(donor: tuple[keras.Model, list[str] | None], model: keras.Model, config: TrainingConfig,
               path: Path) -> None:
    src, classes = donor
    try:
        src_base = src.get_layer(BASE)
    except ValueError:
        raise InvalidTrainingConfig(f"pretrained model {path} has no '{BASE}' layer: it was not trained "
                                    "by an edge node") from None
    base = model.get_layer(BASE)
    _check_fit(src_base.weights, base.weights, path, config)
    base.set_weights(src_base.get_weights())
    head, src_head = model.get_layer(HEAD), _layer_or_none(src, HEAD)
    same_classes = classes is None or classes == list(config.classes)
    if src_head is not None and same_classes and [w.shape for w in src_head.weights] == [w.shape for w in head.weights]:
        head.set_weights(src_head.get_weights())
        log.info("pretrained model %s: base and head reused", path)
    else:
        log.info("pretrained model %s: base reused, new head for classes %s", path, config.classes)


def _check_fit(src: list, dst: list, path: Path, config: TrainingConfig) -> None:
    if len(src) != len(dst):
        raise InvalidTrainingConfig(f"pretrained model {path} does not fit architecture {_describe(config)}: "
                                    f"its base has {len(src)} weight tensors, this one {len(dst)}")
    for a, b in zip(src, dst):
        if tuple(a.shape) != tuple(b.shape):
            raise InvalidTrainingConfig(f"pretrained model {path} does not fit architecture {_describe(config)}: "
                                        f"{b.path} has shape {tuple(b.shape)}, the file {tuple(a.shape)}")


def _layer_or_none(model: keras.Model, name: str) -> keras.layers.Layer | None:
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def _brief(exc: BaseException, limit: int = 400) -> str:
    """Keras' loading errors on one line, without their long list of every layer."""
    text = str(exc).split("List of objects that could not be loaded")[0].split(" Target variable:")[0]
    text = " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(config: TrainingConfig) -> str:
    alpha = f", alpha {config.alpha}" if config.architecture == "mobilenet_v2" else ""
    return f"{config.architecture} (input {list(input_shape(config))}{alpha})"


def set_phase(model: keras.Model, phase: str, config: TrainingConfig) -> None:
    """Trainable flags for a phase: all layers without fine-tuning; else the head alone, then the top N."""
    if not config.fine_tune.enabled:
        model.trainable = True
        return
    base = model.get_layer(BASE)
    if phase == "head":
        base.trainable = False
        return
    base.trainable = True
    top = config.fine_tune.unfreeze_top_layers
    for i, layer in enumerate(base.layers):
        in_top = i >= len(base.layers) - top
        layer.trainable = in_top and not isinstance(layer, keras.layers.BatchNormalization)
