"""One trial's settings, typed: what the driver validates in the config and the trainable
validates again, once, from the dict Tune hands it. Every default and allowed value lives here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainable.families import FAMILIES, ModelError, is_import_path, load_factory

# The allowed values of the settings below, each named once (docs/configuration.md lists them).
Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "onecycle"]  # trainable/schedules.py
Augment = Literal["none", "flip", "crop_flip"]  # trainable/augment.py
Normalize = Literal["channel", "none"]
TestTimeAugment = Literal["none", "flip", "flip_translate"]  # trainable/loop.py: log_probs


class Strict(BaseModel):
    """Unknown keys are errors; assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelChoice(BaseModel):
    # A built-in family (FAMILIES) or a user's model as "package.module:function".
    model: str = "mlp"
    # Keyword arguments of a user's model; search one as `model_args.<name>`.
    model_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_or_importable(cls, model: str) -> str:
        if model not in FAMILIES:
            try:
                load_factory(model)  # imports it: a wrong path is refused before any trial
            except ModelError as err:
                raise ValueError(str(err)) from None
        return model

    @field_validator("model_args")
    @classmethod
    def _names(cls, model_args: dict[str, Any]) -> dict[str, Any]:
        reserved = {"input_shape", "num_classes"} & set(model_args)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))} come from the data, not model_args")
        return model_args


class TrainingSettings(BaseModel):
    optimizer: Optimizer = "adam"  # sgd: with Nesterov momentum; all fused
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only (airbench: 0.85)
    lr: float = Field(0.001, gt=0)  # the peak rate: reached after warm-up
    batch_size: int = Field(64, ge=1)  # images per training step
    epochs: int = Field(5, ge=1)  # passes over the training split: the trial's budget
    weight_decay: float = Field(0.0, ge=0)  # L2 (adam, sgd) or decoupled (adamw)
    schedule: Schedule = "constant"  # cosine, onecycle: lr → lr_end·lr at the last batch
    # epochs of linear warm-up from lr_start·lr to lr, before the schedule; halving's shorter
    # rungs and final.epochs scale it with the budget, so every run has the same shape
    warmup: float = Field(0.0, ge=0)
    lr_start: float = Field(0.0, ge=0, le=1)  # the warm-up's first rate, × lr (airbench: 0.2)
    # where cosine and onecycle end, × lr (airbench: 0.07, its lookahead averaging the weights
    # while the rate stays up)
    lr_end: float = Field(0.0, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # training loss only; val/test loss are plain
    augment: Augment = "none"  # training batches only: flips; crops of the padded image
    # crop_flip: pixels of (reflected) padding each side, so shifts of up to this many pixels;
    # 2 is airbench's translation, milder than the classic 4 for a model that must fit fast
    crop_padding: int = Field(4, ge=1)
    cutout: int = Field(0, ge=0)  # side in pixels of a square zeroed in each training image
    # MixUp and CutMix: each training batch blended with a shuffled copy of itself, in a share
    # λ ~ Beta(α, α), its loss weighted λ and 1 - λ between the two labels; the value is α, 0 is
    # off. With both on, each batch takes one of the two at random.
    mixup: float = Field(0.0, ge=0)
    cutmix: float = Field(0.0, ge=0)  # a box of the partner image pasted in, of area 1 - λ
    normalize: Normalize = "channel"  # channel: train split's mean/std; none: [0, 1] only
    # test-time augmentation, val and test alike: flip also scores each image's mirror and
    # averages the two predicted distributions (for a model trained on flips); flip_translate
    # adds both views shifted one pixel up-left and one down-right, at half the weight
    # together (airbench's test-time augmentation, for a model trained on shifts too)
    tta: TestTimeAugment = "none"
    # airbench's lookahead (trainable/lookahead.py): every 5 steps the weights are pulled to a
    # slow copy of themselves, more strongly toward the end of the run
    lookahead: bool = False
    seed: int = 0  # initialisation, shuffling, augmentation and dropout


# Bases in reverse of the fields' order: the model first, then each family's settings (once
# each: families may share them).
class TrialConfig(
    TrainingSettings,
    *reversed(list(dict.fromkeys(family.settings for family in FAMILIES.values()))),
    ModelChoice,
    Strict,
):
    """Everything one trial needs; each field can be searched over."""


def uses_import_path(model: str) -> bool:
    """Whether `model` names a user's model rather than a built-in family."""
    return model not in FAMILIES and is_import_path(model)
