"""The search space's one translation: each config dimension as Tune's sampler and as Optuna's
distribution (a `quniform` step kept in both), and the trial config with its searched
settings replaced by Tune's samplers."""

from __future__ import annotations

from typing import Any

import optuna

from tuning.config.keys import get_dotted, param_name, set_dotted
from tuning.config.schema import Distribution, ExperimentConfig


def to_tune(dist: Distribution) -> Any:
    """One dimension as Tune's sampler; ranges include both ends."""
    # Ray here, not at the top: the report and the tables translate to Optuna alone, without Ray.
    from ray import tune

    args = dist.args
    if dist.kind == "loguniform":
        return tune.loguniform(*args)
    if dist.kind == "uniform":
        return tune.uniform(*args)
    if dist.kind == "quniform":
        return tune.quniform(*args)
    if dist.kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # Tune's upper bound is exclusive
    return tune.choice(list(args))


def to_optuna(dist: Distribution) -> optuna.distributions.BaseDistribution:
    """One dimension as Optuna's distribution: what the study asks with and plots against."""
    args = dist.args
    if dist.kind == "choice":
        return optuna.distributions.CategoricalDistribution(list(args))
    if dist.kind == "randint":
        return optuna.distributions.IntDistribution(args[0], args[1])
    step = args[2] if dist.kind == "quniform" else None
    return optuna.distributions.FloatDistribution(
        args[0], args[1], log=dist.kind == "loguniform", step=step
    )


def optuna_space(config: ExperimentConfig) -> dict[str, optuna.distributions.BaseDistribution]:
    """The run's searched settings under Optuna's parameter names; a grid's values as
    categories."""
    found = {
        key: optuna.distributions.CategoricalDistribution(values)
        for key, values in config.search.grid.items()
    }
    found.update({key: to_optuna(dist) for key, dist in config.search.space.items()})
    return {param_name(key): dist for key, dist in found.items()}


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """The trial config with every searched setting replaced by its Tune sampler (a grid's by
    `grid_search`); a dotted key (`model_args.width`) reaches into the nested mapping."""
    from ray import tune

    space: dict[str, Any] = config.trial.model_dump()
    for key, values in config.search.grid.items():
        set_dotted(space, key, tune.grid_search(values))
    for key, dist in config.search.space.items():
        set_dotted(space, key, to_tune(dist))
    return space


def trial_value(config: ExperimentConfig, key: str) -> Any:
    """The trial section's value of a searched key, dotted or not; None where it has none."""
    return get_dotted(config.trial.model_dump(), key)
