"""Model families: the registry of built-in ones, and models named by an import path.

A family is the settings it reads and the function that builds it. Every model, built-in or a
user's own, is built the same way: `function(num_classes=K, **kwargs)`, plus
`input_shape=(C, H, W)` when the function's signature names that parameter (a signature that
cannot be read gets none), returning an `nn.Module` from a float batch (N, C, H, W) to logits
(N, K). So the model zoos' builders plug in as they are (`torchvision.models:resnet18`,
`timm:create_model` with `model_name` in its kwargs), and the built-in ones, which name
`input_shape`, get it. A built-in family's kwargs are its settings; a user's model
(`trial.model: "package.module:function"`) gets `trial.model_args`.

Adding a built-in family: a module with its builder, and an entry in FAMILIES with the settings
it reads. This module imports no torch, so a config is checked before torch's import.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from torch import nn

IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
MODEL_ARGS = "model_args"  # the trial field holding a user's model's keyword arguments


class ModelError(ValueError):
    """A model that cannot be built or does not map images to logits; the message says why."""


class MLPSettings(BaseModel):
    hidden: int = Field(128, ge=1)  # units per hidden layer (resmlp: the residual stream's)
    depth: int = Field(1, ge=1)  # hidden layers (resmlp: blocks); 1 is the original network
    dropout: float = Field(0.0, ge=0, lt=1)  # after each hidden layer (resmlp: block); 0 = none


class ResMLPSettings(MLPSettings):
    """The MLP's settings, read for a residual network, and the blocks' expansion."""

    expansion: int = Field(4, ge=1)  # a block's inner width, as a multiple of hidden


class CNNSettings(BaseModel):
    # cnn: the stem's channels, its two stages 2x and 4x this; airbench: the first conv group's
    # channels, the second and third 2x and 4x this
    width: int = Field(32, ge=1)


class AirbenchSettings(CNNSettings):
    # epochs the whitening layer's bias trains before it is frozen (airbench: 3); from then on
    # the first layer needs no backward pass
    whitening_bias_epochs: int = Field(3, ge=0)


@dataclass(frozen=True)
class Family:
    """A built-in model family: the trial settings it reads and its builder's import path."""

    settings: type[BaseModel]
    builder: str
    # Convolutions train faster channels-last, and in bf16 autocast on CUDA and on CPUs with
    # AMX (measured for the built-in CNNs without a loss of accuracy); a user's model keeps the
    # plain layout and float32.
    convolutional: bool = False


FAMILIES: dict[str, Family] = {
    "mlp": Family(MLPSettings, "trainable.mlp:mlp"),
    "resmlp": Family(ResMLPSettings, "trainable.resmlp:resmlp"),
    "cnn": Family(CNNSettings, "trainable.cnn:cnn", convolutional=True),
    "airbench": Family(AirbenchSettings, "trainable.airbench:airbench", convolutional=True),
}


def is_import_path(model: str) -> bool:
    return bool(IMPORT_PATH.match(model))


def readers(setting: str) -> set[str] | None:
    """The built-in families that read `setting`; None when it is not a family's setting.

    A `model_args.<name>` key is read only by models named by an import path: the empty set."""
    if setting.startswith(f"{MODEL_ARGS}."):
        return set()
    found = {name for name, family in FAMILIES.items() if setting in family.settings.model_fields}
    return found or None


def load_factory(path: str) -> Callable[..., Any]:
    """The callable `package.module:function` names (a class works too); ModelError if none."""
    if not is_import_path(path):
        raise ModelError(
            f"model {path!r} is neither a built-in family ({', '.join(FAMILIES)}) nor an "
            "import path such as 'mymodels:build' (package.module:function)"
        )
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(
            f"model {path!r}: cannot import {module_name} ({type(err).__name__}: {err}); run "
            "from the folder that holds it or add that folder to PYTHONPATH"
        ) from None
    except Exception as err:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(
            f"model {path!r}: importing {module_name} failed ({type(err).__name__}: {err})"
        ) from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ModelError(f"model {path!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ModelError(f"model {path!r}: {attribute} is not a function or class")
    return target


def model_kwargs(trial: Any) -> dict[str, Any]:
    """The keyword arguments `trial`'s model is built with, besides the data's shape."""
    family = FAMILIES.get(trial.model)
    if family is None:
        return dict(trial.model_args)
    return {name: getattr(trial, name) for name in family.settings.model_fields}


def names_input_shape(factory: Callable[..., Any]) -> bool:
    """Whether `factory` takes `input_shape` by keyword; False where its signature cannot be
    read (some builtins and C extensions): `**kwargs` alone does not count, as a zoo's builder
    passes those on to a constructor that does not know the name."""
    try:
        parameter = inspect.signature(factory).parameters.get("input_shape")
    except (TypeError, ValueError):
        return False
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return parameter is not None and parameter.kind in keyword


def build_model(trial: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network `trial.model` names, for (C, H, W) inputs and `num_classes` logits."""
    from torch import nn

    family = FAMILIES.get(trial.model)
    factory = load_factory(family.builder if family else trial.model)
    kwargs = model_kwargs(trial)
    shape = {"input_shape": tuple(input_shape)} if names_input_shape(factory) else {}
    try:
        model = factory(**shape, num_classes=num_classes, **kwargs)
    except Exception as err:  # noqa: BLE001 - the user's code: say whose call failed, and how
        raise ModelError(
            f"model {trial.model!r} with {kwargs}: building it failed ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model {trial.model!r} returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def check_model(trial: Any, input_shape: tuple[int, ...], num_classes: int) -> None:
    """ModelError unless `trial`'s model maps a float batch of `input_shape` to (N, K) logits."""
    import torch

    model = build_model(trial, input_shape, num_classes)
    batch = 2  # two images: a batch-norm in training mode needs more than one
    try:
        with torch.no_grad():
            logits = model(torch.zeros(batch, *input_shape))
    except Exception as err:  # noqa: BLE001 - the user's forward failed
        raise ModelError(
            f"model {trial.model!r}: its forward fails on a batch of shape "
            f"{(batch, *input_shape)} ({type(err).__name__}: {err})"
        ) from None
    expected = (batch, num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelError(
            f"model {trial.model!r}: a batch of shape {(batch, *input_shape)} gave {got}; it "
            f"must give logits of shape {expected} (N, num_classes)"
        )
    if not logits.is_floating_point():
        raise ModelError(f"model {trial.model!r}: its logits are {logits.dtype}, not floats")
