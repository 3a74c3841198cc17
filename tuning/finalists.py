"""Finalists: a search's best configurations trained again over fresh seeds, then compared.

A search chooses on one seed per configuration. After it, the `final.top_k` best
configurations are each trained `final.seeds` more times, to the full epoch budget with no
early stopping, as a second Tune run beside the search's (`<run>/ray-final/`), and every
re-run is judged once on the test set. The winner is the finalist with the best mean of the
run's metric; `groups.parquet` and the verdict say which differences the seeds support.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from ray import tune
from ray.tune.search import BasicVariantGenerator

from trainable.trainable import SharedData
from tuning.config import ExperimentConfig
from tuning.export import flat_settings, trial_epochs, trial_status
from tuning.storage import join, tune_storage
from tuning.timing import Phases

FINAL_FOLDER = "ray-final"  # the finalists' Tune experiment, beside the search's `ray/`
FINAL_FIELDS = {
    "finalist": pa.int64(),  # 1 = the search's best configuration, in the search's order
    "search_trial_id": pa.string(),  # the search trial the configuration comes from
    "trial_id": pa.string(),  # this re-run's Tune trial
    "status": pa.string(),  # completed | diverged | interrupted | error
    "epochs_completed": pa.int64(),
    "train_loss": pa.float64(),  # at the last epoch, as every metric here
    "train_acc": pa.float64(),
    "val_acc": pa.float64(),
    "val_loss": pa.float64(),
    "test_acc": pa.float64(),  # the re-run's last model, evaluated once
    "test_loss": pa.float64(),
    "search_value": pa.float64(),  # the run's metric of the search trial, at its last epoch
}

LAST_EPOCH = ("train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss")


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


def settings_key(config: dict) -> str:
    """A configuration's identity without its seed: re-runs of one finalist share it."""
    settings = {k: v for k, v in flat_settings(config).items() if k != "seed"}
    return json.dumps(settings, sort_keys=True, default=str)


def select_finalists(results: tune.ResultGrid, config: ExperimentConfig) -> list[Finalist]:
    """The `final.top_k` best distinct configurations by the run's metric at their last epoch,
    from trials that trained their full budget when at least top_k did, else from all that
    reported the metric (diverged and failed trials never)."""
    top_k, sign = config.final.top_k, -1 if config.mode == "max" else 1
    candidates = []
    for result in results:
        epochs = trial_epochs(result.path, result.filesystem)
        status = trial_status(result, epochs, result.config.get("epochs", 0))
        value = epochs[-1].get(config.metric) if epochs else None
        if status in ("error", "diverged") or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        candidates.append((status == "completed", Path(result.path).name, result.config, value))
    full = [c for c in candidates if c[0]]
    pool = full if len(full) >= top_k else candidates
    pool.sort(key=lambda c: (sign * c[3], c[1]))
    finalists, seen = [], set()
    for _, trial_id, trial_config, value in pool:
        key = settings_key(trial_config)
        if key in seen:  # Optuna may propose one configuration twice
            continue
        seen.add(key)
        finalists.append(Finalist(len(finalists) + 1, trial_id, dict(trial_config), value))
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
    reuse_actors: bool = True,
    phases: Phases | None = None,
    verbose: bool = True,
) -> tune.ResultGrid:
    """Train every finalist's re-runs as one Tune run, or continue the one an interrupted run
    left in `<run>/ray-final` (finished re-runs are not trained again). Without `verbose`, the
    compact progress view instead of Tune's output."""
    from tuning.progress import Progress
    from tuning.runner import make_trainable, run_config, trials_at_once

    phases = Phases() if phases is None else phases
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    trainable = make_trainable(config, shared, evaluate_test=True)
    points = [run for finalist in finalists for run in finalist.runs(config.final.seeds)]
    # Every point is a whole trial config; the space only names the keys, every key a point
    # sets (a user's model_args too). Tune keeps no param_space across a restore: given again.
    space = points[0]
    # Each point overrides the first one's values on purpose; Tune would warn once per value.
    logging.getLogger("ray.tune.search.variant_generator").setLevel(logging.ERROR)
    location = final_location(config, run_dir)
    progress = Progress(
        config.metric, config.mode, config.trial.epochs, searched=[*config.search.space, "seed"]
    )
    callbacks = [] if verbose else [progress]
    if tune.Tuner.can_restore(location):
        tuner = tune.Tuner.restore(
            location,
            trainable=trainable,
            param_space=space,
            resume_unfinished=True,
            resume_errored=True,
        )
        # This session's callbacks, not the first session's pickled ones (as runner.run_tuner).
        tuner._local_tuner.get_run_config().callbacks = callbacks
        with phases.timed("finalists"):
            return tuner.fit()
    storage_path, _ = tune_storage(config.run.storage, run_dir)
    limit = config.search.max_concurrent or trials_at_once(config)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
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
    with phases.timed("finalists"):
        return tuner.fit()


def final_table(
    results: tune.ResultGrid, finalists: list[Finalist], config: ExperimentConfig
) -> pa.Table:
    """`final.parquet`: one row per (finalist, seed), finalists in the search's order."""
    by_key = {settings_key(f.config): f for f in finalists}
    rows, params = [], dict.fromkeys(flat_settings(config.trial.model_dump()))
    for result in results:
        finalist = by_key.get(settings_key(result.config))
        if finalist is None:  # not one of today's finalists: cannot happen unless edited
            continue
        epochs = trial_epochs(result.path, result.filesystem)
        planned = result.config.get("epochs", 0)
        status = trial_status(result, epochs, planned)
        if status == "early_stopped":  # no scheduler stops a finalist: it was cut short
            status = "interrupted"
        last = epochs[-1] if epochs else {}
        hyper = flat_settings(result.config)
        params.update(dict.fromkeys(hyper))
        rows.append(
            {
                "finalist": finalist.rank,
                "search_trial_id": finalist.trial_id,
                "trial_id": Path(result.path).name,
                "status": status,
                "epochs_completed": len(epochs),
                **{k: last.get(k) for k in LAST_EPOCH},
                "search_value": finalist.value,
                **hyper,
            }
        )
    rows.sort(key=lambda row: (row["finalist"], row["seed"]))
    columns = list(FINAL_FIELDS) + [p for p in params if p not in FINAL_FIELDS]
    if not rows:
        return pa.table({c: pa.array([], FINAL_FIELDS.get(c, pa.null())) for c in columns})
    return pa.table({c: pa.array([r.get(c) for r in rows], FINAL_FIELDS.get(c)) for c in columns})


def finalise(
    config: ExperimentConfig,
    shared: SharedData,
    run_dir: Path,
    results: tune.ResultGrid,
    reuse_actors: bool = True,
    phases: Phases | None = None,
    verbose: bool = True,
) -> tuple[list[Finalist], tune.ResultGrid] | None:
    """After a finished search, the finalists and their re-runs' results; None when finalisation
    is off, the run is a grid, or the search was interrupted (its --resume finalises)."""
    if not config.final.top_k or config.search.kind == "grid" or not search_finished(results):
        return None
    finalists = select_finalists(results, config)
    if not finalists:
        print("finalists: no trial reported the metric; nothing to re-run")
        return None
    seeds = config.final.seeds
    print(
        f"\nfinalists: the {len(finalists)} best configurations of the search "
        f"({', '.join(f.trial_id for f in finalists)}), each trained again with {seeds} fresh "
        f"seed{'s' if seeds != 1 else ''} for {config.trial.epochs} epochs, no early stopping"
    )
    results = run_finalists(config, shared, run_dir, finalists, reuse_actors, phases, verbose)
    return finalists, results
