"""Finalists: a search's best configurations trained again over fresh seeds, then compared.

A search chooses on one seed per configuration. After it, the `final.top_k` best
configurations are each trained `final.seeds` more times, to the full epoch budget (or
`final.epochs`) with no early stopping, as a second Tune run beside the search's
(`<run>/ray-final/`), and every re-run is judged once on the test set. The winner is the
finalist with the best mean of the run's metric; `groups.parquet` and the verdict say which
differences the seeds support.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.search import BasicVariantGenerator

from trainable.schedules import warmup_for
from trainable.trainable import SharedData
from tuning.config import ExperimentConfig
from tuning.config.keys import settings_key
from tuning.config.logs import quieter
from tuning.results.outcome import Outcome, epoch_budget, rung_reached
from tuning.results.tune_logs import result_outcome, trial_epochs
from tuning.run.progress import Progress
from tuning.run.storage import join, tune_storage
from tuning.run.timing import Phases
from tuning.run.tuner import make_trainable, restore_tuner, run_config, trials_at_once

logger = logging.getLogger(__name__)

FINAL_FOLDER = "ray-final"  # the finalists' Tune experiment, beside the search's `ray/`


@dataclass(frozen=True)
class Finalist:
    """One configuration chosen for re-runs, with where it came from in the search."""

    rank: int  # its place in the search's single-seed order, 1 = best
    trial_id: str
    config: dict  # the trial settings it ran with
    value: float  # the run's metric at its last epoch

    def runs(self, seeds: int) -> list[dict]:
        """Its configuration with fresh seeds: s + 1 … s + seeds, s the search trial's seed."""
        base = int(self.config.get("seed", 0))
        return [{**self.config, "seed": base + i} for i in range(1, seeds + 1)]


def select_finalists(results: tune.ResultGrid, config: ExperimentConfig) -> list[Finalist]:
    """The `final.top_k` best distinct configurations by the run's metric at their last epoch,
    from trials that trained their full budget when at least top_k did, else from all that
    reported the metric (diverged and failed trials never)."""
    top_k, sign = config.final.top_k, -1 if config.mode == "max" else 1
    candidates = []
    for result in results:
        epochs = trial_epochs(result.path, result.filesystem)
        budget = epoch_budget(result.config, config.trial.epochs)
        outcome = result_outcome(result, epochs, budget)
        value = epochs[-1].get(config.metric) if epochs else None
        if outcome in (Outcome.ERROR, Outcome.DIVERGED) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        complete = outcome == Outcome.COMPLETED
        if config.scheduler.retrains:  # a rung's budget is not the full one
            complete = complete and len(epochs) >= config.trial.epochs
        # Where trials train rung budgets, a further rung ranks first (a rung's value is not
        # comparable with a longer run's); elsewhere the value alone ranks.
        further = -rung_reached(len(epochs), budget) if config.scheduler.retrains else 0
        candidates.append((complete, further, Path(result.path).name, result.config, value))
    full = [c for c in candidates if c[0]]
    pool = full if len(full) >= top_k else candidates
    pool.sort(key=lambda c: (c[1], sign * c[4], c[2]))
    finalists, seen = [], set()
    for _, _, trial_id, trial_config, value in pool:
        trial_config = dict(trial_config)
        # A finalist trains the finalists' budget: whatever its rung, or however long the
        # search trained it where final.epochs says; its warm-up keeps its share of the run.
        if config.scheduler.retrains or config.final.epochs:
            epochs = epoch_budget(trial_config, config.trial.epochs)
            trial_config["epochs"] = config.final_epochs
            if trial_config.get("warmup"):
                trial_config["warmup"] = warmup_for(
                    epochs, trial_config["warmup"], config.final_epochs
                )
        key = settings_key(trial_config)
        if key in seen:  # Optuna may propose one configuration twice
            continue
        seen.add(key)
        finalists.append(Finalist(len(finalists) + 1, trial_id, trial_config, value))
        if len(finalists) == top_k:
            break
    return finalists


def search_finished(results: tune.ResultGrid) -> bool:
    """Whether every search trial ended (a Ctrl-C leaves some paused): finalists wait for it."""
    return results.num_terminated + results.num_errors == len(results)


def final_location(config: ExperimentConfig, run_dir: Path) -> str:
    storage_path, _ = tune_storage(config.run.storage, run_dir)
    return join(storage_path, FINAL_FOLDER)


def run_finalists(
    config: ExperimentConfig,
    shared: SharedData,
    run_dir: Path,
    finalists: list[Finalist],
    *,
    reuse_actors: bool = True,
    phases: Phases | None = None,
    verbose: bool = True,
    callbacks: list[tune.Callback] = (),
) -> tune.ResultGrid:
    """Train every finalist's re-runs as one Tune run, or continue the one an interrupted run
    left in `<run>/ray-final` (finished re-runs are not trained again). Without `verbose`, the
    compact progress view instead of Tune's output."""
    phases = Phases() if phases is None else phases
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = make_trainable(config, shared, evaluate_test=True)
    points = [run for finalist in finalists for run in finalist.runs(config.final.seeds)]
    # Every point is a whole trial config; the space only names the keys, every key a point
    # sets (a user's model_args too). Tune keeps no param_space across a restore: given again.
    space = points[0]
    location = final_location(config, run_dir)
    progress = Progress(
        config.metric, config.mode, config.final_epochs, searched=[*config.search.keys, "seed"]
    )
    callbacks = [*callbacks] if verbose else [progress, *callbacks]
    # Each point sets the first one's values again on purpose; Tune would warn once per value.
    variants_log = "ray.tune.search.variant_generator"
    with phases.timed("finalists"), quieter(variants_log, logging.ERROR):
        if tune.Tuner.can_restore(location):
            return restore_tuner(location, trainable, callbacks, param_space=space).fit()
        return _new_tuner(
            config, trainable, run_dir, points, callbacks, reuse_actors, verbose
        ).fit()


def _new_tuner(config, trainable, run_dir, points, callbacks, reuse_actors, verbose) -> tune.Tuner:
    storage_path, _ = tune_storage(config.run.storage, run_dir)
    limit = config.search.max_concurrent or trials_at_once(config)
    return tune.Tuner(
        trainable,
        param_space=points[0],
        tune_config=tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            search_alg=BasicVariantGenerator(points_to_evaluate=points, max_concurrent=limit),
            num_samples=len(points),
            reuse_actors=reuse_actors,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config(config, FINAL_FOLDER, storage_path, callbacks, verbose),
    )


def finalise(
    config: ExperimentConfig,
    shared: SharedData,
    run_dir: Path,
    results: tune.ResultGrid,
    *,
    reuse_actors: bool = True,
    phases: Phases | None = None,
    verbose: bool = True,
    callbacks: list[tune.Callback] = (),
) -> tuple[list[Finalist], tune.ResultGrid] | None:
    """After a finished search, the finalists and their re-runs' results; None when finalisation
    is off, the run is a grid, or the search was interrupted (its --resume finalises)."""
    if not config.final.top_k or config.search.kind == "grid" or not search_finished(results):
        return None
    finalists = select_finalists(results, config)
    if not finalists:
        logger.info("finalists: no trial reported the metric; nothing to re-run")
        return None
    seeds = config.final.seeds
    chosen = (
        "the best configuration"
        if len(finalists) == 1
        else f"the {len(finalists)} best configurations"
    )
    logger.info(
        "\nfinalists: %s of the search (%s), each trained again with %d fresh seed%s for %d "
        "epochs, no early stopping",
        chosen,
        ", ".join(f.trial_id for f in finalists),
        seeds,
        "s" if seeds != 1 else "",
        config.final_epochs,
    )
    results = run_finalists(
        config,
        shared,
        run_dir,
        finalists,
        reuse_actors=reuse_actors,
        phases=phases,
        verbose=verbose,
        callbacks=callbacks,
    )
    return finalists, results
