"""The training configuration of a task, as the paper names it.

Generators (split, batch size, shuffle, seed, classes, class weights), model input
size and architecture, epochs, preprocessing and augmentation, pretrained weights,
callbacks and fine-tuning. Shape checks live here; checks that need the line's data
(unknown class, weights that do not fit) are made by the edge before it trains.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeneratorConfig(_Cfg):
    validation_split: float = Field(default=0.2, gt=0, lt=0.9)
    test_split: float = Field(default=0.1, ge=0, lt=0.5)
    batch_size: int = Field(default=16, ge=1, le=1024)
    shuffle: bool = True
    seed: int = 42
    class_weights: dict[str, float] | Literal["balanced"] | None = None


class PreprocessingConfig(_Cfg):
    normalization: Literal["rescale", "standardize"] = "rescale"
    color_mode: Literal["rgb", "grayscale"] = "rgb"


class AugmentationConfig(_Cfg):
    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation: float = Field(default=0.0, ge=0, le=0.5, description="fraction of a full turn")
    zoom: float = Field(default=0.0, ge=0, le=0.5)
    brightness: float = Field(default=0.0, ge=0, le=0.5)
    contrast: float = Field(default=0.0, ge=0, le=0.9)


class PretrainedConfig(_Cfg):
    """Where the model's starting weights come from (never downloaded).

    ``none``: random initialisation; ``file``: a weights or model file on the edge server;
    ``deployed``: the model the line's edge last deployed for the brand; ``base_model``: the
    registry version the task names as its ``base_model`` (fetched from the cloud when the
    edge does not have it, possibly one trained on another line).
    """

    source: Literal["none", "file", "deployed", "base_model"] = Field(
        default="none", description="none | file (path on the edge) | deployed (the line's current model) | "
                                    "base_model (the registry version the task names)")
    path: str | None = Field(default=None, description="local weights file when source=file")

    @model_validator(mode="after")
    def _path_for_file(self) -> PretrainedConfig:
        if self.source == "file" and not self.path:
            raise ValueError("path is required when source is 'file'")
        return self


class EarlyStoppingConfig(_Cfg):
    enabled: bool = False
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(default=3, ge=1)


class LearningRateConfig(_Cfg):
    schedule: Literal["constant", "reduce_on_plateau", "cosine", "step"] = "constant"
    factor: float = Field(default=0.5, gt=0, lt=1)
    patience: int = Field(default=2, ge=1)
    step_epochs: int = Field(default=5, ge=1)
    min_lr: float = Field(default=1e-6, ge=0)


class CallbacksConfig(_Cfg):
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    learning_rate: LearningRateConfig = LearningRateConfig()
    checkpoint: bool = True


class FineTuneConfig(_Cfg):
    enabled: bool = False
    unfreeze_top_layers: int = Field(default=20, ge=1)
    epochs: int = Field(default=2, ge=1, le=1000)
    learning_rate: float = Field(default=1e-5, gt=0, lt=1)


class TrainingConfig(_Cfg):
    classes: list[str] = Field(min_length=2, description="class names; the first is the good (OK) class")
    architecture: Literal["small_cnn", "mobilenet_v2", "efficientnet_b0"] = "small_cnn"
    alpha: float = Field(default=1.0, ge=0.1, le=1.4,
                         description="width multiplier of mobilenet_v2 (Keras alpha; 0.35 is tiny); 1.0 elsewhere")
    input_size: int = Field(default=64, ge=32, le=512)
    epochs: int = Field(default=5, ge=1, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0, lt=1)
    optimizer: Literal["adam", "sgd", "rmsprop"] = "adam"
    generators: GeneratorConfig = GeneratorConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    pretrained: PretrainedConfig = PretrainedConfig()
    callbacks: CallbacksConfig = CallbacksConfig()
    fine_tune: FineTuneConfig = FineTuneConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TrainingConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError("classes must be unique")
        weights = self.generators.class_weights
        if isinstance(weights, dict):
            unknown = sorted(set(weights) - set(self.classes))
            if unknown:
                raise ValueError(f"class_weights name unknown classes {unknown}")
        if self.alpha != 1.0 and self.architecture != "mobilenet_v2":
            raise ValueError(f"alpha (width multiplier) applies to mobilenet_v2 only, not {self.architecture}")
        if self.fine_tune.enabled and self.architecture == "small_cnn":
            raise ValueError("fine_tune needs a pretrained base: architecture mobilenet_v2 or efficientnet_b0")
        return self
