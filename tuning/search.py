"""The config's search section → Tune's param_space, searcher and scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search import BasicVariantGenerator, Searcher

from trainable.families import MODEL_ARGS
from trainable.settings import TrialConfig
from tuning.config import ConfigError, Distribution, ExperimentConfig
from tuning.study import STUDY_FILE, RecordingOptunaSearch, study_storage


@dataclass
class SearchPlan:
    """Everything the Tuner needs to decide which trials run and for how long."""

    param_space: dict[str, Any]
    search_alg: Searcher | BasicVariantGenerator | None
    scheduler: TrialScheduler
    num_samples: int
    notes: list[str] = field(default_factory=list)  # choices the user should hear about


def to_tune(dist: Distribution) -> Any:
    """One YAML distribution as Tune's sampler; ranges include both ends."""
    low_high = dist.args
    if dist.kind == "loguniform":
        return tune.loguniform(*low_high)
    if dist.kind == "uniform":
        return tune.uniform(*low_high)
    if dist.kind == "quniform":
        return tune.quniform(*low_high)
    if dist.kind == "randint":
        return tune.randint(low_high[0], low_high[1] + 1)  # Tune's upper bound is exclusive
    return tune.choice(list(dist.args))


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    """The trial config with every searched field replaced by its Tune sampler; a dotted key
    (`model_args.width`) reaches into the nested mapping."""
    space: dict[str, Any] = config.trial.model_dump()
    searched = {
        **{key: tune.grid_search(values) for key, values in config.search.grid.items()},
        **{key: to_tune(dist) for key, dist in config.search.space.items()},
    }
    for key, sampler in searched.items():
        *parents, leaf = key.split(".")
        node = space
        for parent in parents:
            node = node[parent]
        node[leaf] = sampler
    return space


def nested(point: dict[str, Any]) -> dict[str, Any]:
    """`{"model_args.width": 8}` as `{"model_args": {"width": 8}}`, the shape of a config."""
    out: dict[str, Any] = {}
    for key, value in point.items():
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return out


def trial_value(trial: TrialConfig, key: str) -> Any:
    """The trial section's value for a searched key, dotted or not; None where it has none."""
    if key.startswith(f"{MODEL_ARGS}."):
        return trial.model_args.get(key.split(".", 1)[1])
    return getattr(trial, key)


def build_plan(config: ExperimentConfig, run_dir: Path) -> SearchPlan:
    """Searcher and scheduler for the config; ConfigError for a combination Tune refuses."""
    search, notes = config.search, []
    space = param_space(config)
    kind = search.kind
    if not searches_with_optuna(config) and kind == "optuna":
        # Tune refuses a searcher beside PBT: PBT's explore step is the search.
        notes.append("PBT cannot take a searcher: running it with random search, not Optuna")
        kind = "random"
    first = []
    if search.evaluate_trial_first:
        point = {key: trial_value(config.trial, key) for key in search.space}
        first = [{key: search.space[key].nearest(value) for key, value in point.items()}]
        if first[0] != point:
            notes.append(f"first point moved into the search space: {point} → {first[0]}")
    if search.warm_start:
        first = _warm_start(config, kind, run_dir, first, notes)
    try:
        if kind == "optuna":
            # Optuna names a nested parameter by its path joined with "/" (Tune's flattening).
            flat = [{key.replace(".", "/"): value for key, value in p.items()} for p in first]
            search_alg = _optuna_searcher(config, flat, run_dir)
        elif kind == "random":
            search_alg = BasicVariantGenerator(
                points_to_evaluate=[nested(point) for point in first] or None,
                max_concurrent=search.max_concurrent or 0,
                random_state=search.seed,
            )
        else:
            search_alg = BasicVariantGenerator(max_concurrent=search.max_concurrent or 0)
        scheduler = _scheduler(config)
    except (ValueError, AssertionError, TypeError) as err:
        raise ConfigError(f"Tune refuses this search/scheduler combination: {err}") from None
    num_samples = 1 if kind == "grid" else search.num_samples
    return SearchPlan(space, search_alg, scheduler, num_samples, notes)


def searches_with_optuna(config: ExperimentConfig) -> bool:
    """Whether Optuna's searcher runs the search, and so records the study itself."""
    return config.search.kind == "optuna" and config.scheduler.kind != "pbt"


def _warm_start(
    config: ExperimentConfig, kind: str, run_dir: Path, first: list[dict], notes: list[str]
) -> list[dict]:
    """Put the earlier runs' trials in the study; `first` less a point they already tried."""
    from tuning.warm_start import seed_study

    if kind != "optuna":
        raise ConfigError("search.warm_start needs Optuna's study, and PBT runs random search")
    line, known = seed_study(config, run_dir / STUDY_FILE)
    notes.append(line)
    return [p for p in first if {k.replace(".", "/"): v for k, v in p.items()} not in known]


def _optuna_searcher(config: ExperimentConfig, first: list[dict], run_dir: Path) -> Searcher:
    """Optuna's TPE with its study in the run folder; `run_tuner` limits its concurrency."""
    import optuna

    # SQLite in the run folder: the study outlives the run, resumes, and optuna-dashboard reads it.
    return RecordingOptunaSearch(
        points_to_evaluate=first or None,
        sampler=optuna.samplers.TPESampler(seed=config.search.seed),
        study_name=run_dir.name,
        storage=study_storage(run_dir / STUDY_FILE),
        epochs=config.trial.epochs,
    )


def _scheduler(config: ExperimentConfig) -> TrialScheduler:
    s, max_t = config.scheduler, config.trial.epochs
    if s.kind == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.kind == "median":
        # Epochs, not Tune's default of seconds: comparable across fast and slow trials.
        return MedianStoppingRule(
            time_attr="training_iteration",
            grace_period=s.grace_period,
            min_samples_required=s.min_samples_required,
        )
    if s.kind == "hyperband":
        return HyperBandScheduler(
            time_attr="training_iteration", max_t=max_t, reduction_factor=s.reduction_factor
        )
    if s.kind == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration",
            perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile_fraction,
            hyperparam_mutations=_pbt_mutations(config),
        )
    return FIFOScheduler()


def _pbt_mutations(config: ExperimentConfig) -> dict[str, Any]:
    """PBT perturbs lr and weight decay: within the search space's ranges where given."""
    space, lr = config.search.space, config.trial.lr
    return {
        "lr": to_tune(space["lr"]) if "lr" in space else tune.loguniform(lr / 10, lr * 10),
        "weight_decay": (
            to_tune(space["weight_decay"])
            if "weight_decay" in space
            else tune.loguniform(1e-6, 1e-2)
        ),
    }
