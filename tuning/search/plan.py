"""The config's search and scheduler sections → Tune's param_space, searcher and scheduler."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
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

from tuning.config import ConfigError, ExperimentConfig
from tuning.config.keys import TRAINING_ITERATION, nested, param_name
from tuning.config.schema import SearchConfig
from tuning.config.space import optuna_space, param_space, to_tune, trial_value
from tuning.search.halving import Rungs
from tuning.search.searcher import StudySearcher
from tuning.search.study import STUDY_FILE, open_study
from tuning.search.warm_start import seed_study


@dataclass
class SearchPlan:
    """Everything the Tuner needs to decide which trials run and for how long."""

    param_space: dict[str, Any]
    search_alg: Searcher | BasicVariantGenerator | None
    scheduler: TrialScheduler
    num_samples: int
    notes: list[str] = field(default_factory=list)  # choices the user should hear about


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
        point = {key: trial_value(config, key) for key in search.space}
        first = [{key: search.space[key].nearest(value) for key, value in point.items()}]
        if first[0] != point:
            notes.append(f"first point moved into the search space: {point} → {first[0]}")
    if search.warm_start:
        first = _warm_start(config, kind, run_dir, first, notes)
    try:
        if kind == "optuna":
            points = [{param_name(key): value for key, value in p.items()} for p in first]
            search_alg = _optuna_searcher(config, points, run_dir, notes)
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
    if kind != "optuna":
        raise ConfigError("search.warm_start needs Optuna's study, and PBT runs random search")
    line, known = seed_study(config, run_dir / STUDY_FILE)
    notes.append(line)
    return [p for p in first if {param_name(k): v for k, v in p.items()} not in known]


def _optuna_searcher(
    config: ExperimentConfig, points: list[dict], run_dir: Path, notes: list[str]
) -> Searcher:
    """Optuna's sampler (search.sampler) over the run's study, in SQLite in the run folder: the
    study outlives the run, resumes, and optuna-dashboard reads it. `run_tuner` limits its
    concurrency."""
    sampler = make_sampler(config.search)
    study = open_study(run_dir, metric=config.metric, mode=config.mode, sampler=sampler)
    epochs, scheduler = config.trial.epochs, config.scheduler
    rungs = None
    samples, factor = config.search.num_samples, scheduler.reduction_factor
    if scheduler.kind == "halving" and samples <= factor:
        # A rung promotes once it holds `factor` trials, and a promotion is one trial more:
        # with fewer, halving would train nothing to the full budget.
        notes.append(
            f"halving needs more than {factor:g} trials to promote one; with {samples} each "
            f"trains its full {epochs} epochs"
        )
    elif scheduler.kind == "halving":
        rungs = Rungs(
            budgets=[*scheduler.rungs(epochs), epochs],
            reduction_factor=factor,
            maximize=config.mode == "max",
        )
    return StudySearcher(
        study=study,
        space=optuna_space(config),
        metric=config.metric,
        mode=config.mode,
        epochs=epochs,
        points=points,
        rungs=rungs,
        warmup=config.trial.warmup,
    )


def make_sampler(search: SearchConfig) -> optuna.samplers.BaseSampler:
    if search.sampler == "gp":
        # It models COMPLETE trials only: under halving, those that reached the full budget.
        return optuna.samplers.GPSampler(seed=search.seed, n_startup_trials=search.startup_trials)
    return optuna.samplers.TPESampler(
        seed=search.seed,
        multivariate=search.tpe.multivariate,
        constant_liar=search.tpe.constant_liar,
        n_startup_trials=search.startup_trials,
    )


def _scheduler(config: ExperimentConfig) -> TrialScheduler:
    s, max_t = config.scheduler, config.trial.epochs
    if s.kind == "halving":
        return FIFOScheduler()  # the searcher sets each trial's budget (tuning/search/halving.py)
    if s.kind == "asha":
        return ASHAScheduler(
            time_attr=TRAINING_ITERATION,
            max_t=max_t,
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    if s.kind == "median":
        # Epochs, not Tune's default of seconds: comparable across fast and slow trials.
        return MedianStoppingRule(
            time_attr=TRAINING_ITERATION,
            grace_period=s.grace_period,
            min_samples_required=s.min_samples_required,
        )
    if s.kind == "hyperband":
        return HyperBandScheduler(
            time_attr=TRAINING_ITERATION, max_t=max_t, reduction_factor=s.reduction_factor
        )
    if s.kind == "pbt":
        return PopulationBasedTraining(
            time_attr=TRAINING_ITERATION,
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
