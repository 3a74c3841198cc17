"""Names every room shares: result keys, the separators of nested settings, study marks, and
the helpers that read and write dotted keys. Each is spelt here once."""

from __future__ import annotations

import json
from typing import Any

from trainable.families import MODEL_ARGS

# Tune's count of a trial's reports (ray.tune.result.TRAINING_ITERATION): one per epoch here.
TRAINING_ITERATION = "training_iteration"
EPOCH = "epoch"  # the trainable's own 1-based epoch, in every report and table

DOT = "."  # a nested setting in the config, `--set` and the tables: `model_args.width`
# The same setting in an Optuna study's parameter names, as Tune flattens nested configs.
PARAM_SEPARATOR = "/"

# User attributes of study trials: where a warm start's trials came from; which Tune trial a
# study trial records; which earlier study trial a resumed one continues.
RUN_MARK, TRIAL_MARK = "warm_start_run", "warm_start_trial_id"
TUNE_TRIAL_MARK = "tune_trial_id"
RESUMES_MARK = "resumes"
PROMOTES_MARK = "promotes"  # halving: the study trial whose rung result earned this one

__all__ = ["MODEL_ARGS"]  # re-exported: the trial field of a user's model's arguments


def get_dotted(mapping: dict[str, Any], key: str, sep: str = DOT, default: Any = None) -> Any:
    """`mapping["a"]["b"]` for the key `a.b`; `default` where a part is missing."""
    node: Any = mapping
    for part in key.split(sep):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(mapping: dict[str, Any], key: str, value: Any, sep: str = DOT) -> None:
    """Set `mapping["a"]["b"] = value` for the key `a.b`, making (or replacing with) mappings on
    the way."""
    *parents, leaf = key.split(sep)
    node = mapping
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def nested(point: dict[str, Any], sep: str = DOT) -> dict[str, Any]:
    """`{"model_args.width": 8}` as `{"model_args": {"width": 8}}`, the shape of a config."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        set_dotted(out, key, value, sep)
    return out


def param_name(key: str) -> str:
    """A setting's dotted key as an Optuna parameter name: `model_args.width` becomes
    `model_args/width`."""
    return key.replace(DOT, PARAM_SEPARATOR)


def setting_key(name: str) -> str:
    """An Optuna parameter name as the setting's dotted key (the inverse of `param_name`)."""
    return name.replace(PARAM_SEPARATOR, DOT)


def flat_settings(trial: dict[str, Any]) -> dict[str, Any]:
    """A trial's settings a column each: its model's `model_args` as `model_args.<name>`."""
    own = trial.get(MODEL_ARGS) or {}
    return {
        **{key: value for key, value in trial.items() if key != MODEL_ARGS},
        **{f"{MODEL_ARGS}{DOT}{name}": value for name, value in own.items()},
    }


def settings_key(trial: dict[str, Any]) -> str:
    """A configuration's identity without its seed: the re-runs of one finalist share it."""
    settings = {k: v for k, v in flat_settings(trial).items() if k != "seed"}
    return json.dumps(settings, sort_keys=True, default=str)
