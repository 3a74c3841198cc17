"""Experiment config files: YAML → the validated schema, with dotted `--set` overrides and the
`--smoke` reduction."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainable.schedules import warmup_for
from tuning.config.errors import ConfigError
from tuning.config.keys import DOT, set_dotted
from tuning.config.schema import ExperimentConfig


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment, apply `KEY=VALUE` overrides, validate; ConfigError on any fault."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(
            f"cannot read config {path}: {err.strerror}; check the --config path"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections (name, data, trial, ...)")
    raw = apply_overrides(raw, overrides)
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"config {path} is invalid:\n{_describe(err)}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `a.b.c=YAML` override set; unknown keys are refused."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set '{item}' must look like KEY=VALUE, e.g. --set trial.lr=0.01")
        parts = key.strip().split(DOT)
        _check_key(key, parts)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: value '{text}' is not valid YAML: {err}") from None
        set_dotted(raw, key.strip(), value)
    return raw


def _check_key(key: str, parts: list[str]) -> None:
    model: type[BaseModel] = ExperimentConfig
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            where = DOT.join(parts[:depth]) or "the top level"
            known = ", ".join(model.model_fields)
            raise ConfigError(f"--set {key}: '{part}' is not a key of {where} (known: {known})")
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return  # a leaf or a free mapping such as search.grid: validated with the file
        model = annotation
    raise ConfigError(f"--set {key}: '{key}' is a section; set one of its keys instead")


def _describe(err: ValidationError) -> str:
    lines = []
    for problem in err.errors():
        where = DOT.join(str(p) for p in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key; remove it or fix its spelling"
        got = problem.get("input")
        # A check across sections gets the whole config as its input: not worth echoing.
        quiet = problem["type"] in ("extra_forbidden", "missing") or isinstance(got, dict)
        quiet = quiet or where in ("run.storage", "run.mlflow")  # may carry credentials
        shown = "" if quiet else f" (got {got!r})"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def smoke_overrides(config: ExperimentConfig, synthetic: bool) -> list[str]:
    """`--set` items for a tiny version of the experiment: small data, 2 epochs, 2 trials.

    Overrides rather than edits, so the user's own `--set` items, applied after, still win.
    """
    epochs = min(config.trial.epochs, 2)
    items = [
        "data.train_subset=2000",
        "data.test_subset=1000",
        f"data.val_size={min(config.data.val_size, 500)}",
        f"trial.epochs={epochs}",
        # the warm-up keeps its share of the shorter run, as halving's rungs do
        f"trial.warmup={warmup_for(config.trial.epochs, config.trial.warmup, epochs)}",
        f"search.num_samples={min(config.search.num_samples, 2)}",
        "search.time_budget_s=null",
        "scheduler.grace_period=1",
    ]
    if config.final.top_k:
        items += ["final.top_k=1", "final.seeds=2"]  # the finalists' path, two tiny re-runs
        if config.final.epochs:
            items.append("final.epochs=2")
    if synthetic:
        items.append("data.source=synthetic")
    for index, (key, values) in enumerate(config.search.grid.items()):
        kept = values[:2] if index == 0 else values[:1]  # two trials in all
        items.append(f"search.grid.{key}={json.dumps(kept)}")
    return items
