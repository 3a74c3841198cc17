"""Run one Tuner over the experiment's search space."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from trainable.data import DataBundle
from trainable.trainable import CifarTrainable, SharedData, evaluate_checkpoint
from tuning.config import ExperimentConfig
from tuning.config.keys import TRAINING_ITERATION
from tuning.config.logs import quieter
from tuning.results.outcome import epoch_budget, rung_reached
from tuning.run.cluster import trial_nodes
from tuning.run.storage import tune_location, tune_storage
from tuning.run.timing import Phases
from tuning.search.plan import SearchPlan
from tuning.search.study import STUDY_FILE, study_file


class RunWatch(tune.Callback):
    """Tells an interrupted fit from a finished one, and which trials it left unfinished.

    After a first Ctrl-C Tune's fit returns normally, and its clean-up marks the trials that
    were running TERMINATED, like trials that ended. This callback wraps Tune's own SIGINT
    handler (installed before any callback's `setup`) to see the signal, and keeps each
    trial's status as of the last step, before that clean-up.
    """

    FINISHED = ("TERMINATED", "ERROR")

    def __init__(self, on_trial_start: Callable[[], None] = lambda: None) -> None:
        self.interrupted = False
        self.unfinished: set[str] = set()
        self.configs: dict[str, dict] = {}  # every trial's config, reported or not
        self._statuses: dict[str, str] = {}
        self._on_trial_start = on_trial_start
        self._tune_handler = None

    def setup(self, **info) -> None:
        tune_handler = signal.getsignal(signal.SIGINT)
        if not callable(tune_handler):
            return

        def on_sigint(sig, frame) -> None:
            self.interrupted = True
            tune_handler(sig, frame)  # Tune stops gracefully and restores the handler before it

        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread: Tune installed no handler either
            return
        self._tune_handler, self._handler = tune_handler, on_sigint

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._on_trial_start()

    def on_step_end(self, iteration, trials, **info) -> None:
        self._statuses = {t.trial_id: t.status for t in trials}

    def on_experiment_end(self, trials, **info) -> None:
        statuses = {**{t.trial_id: t.status for t in trials}, **self._statuses}
        self.unfinished = {tid for tid, status in statuses.items() if status not in self.FINISHED}
        self.configs = {t.trial_id: t.config for t in trials}
        if self._tune_handler and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, self._tune_handler)  # as Tune leaves it, unwrapped


def restoring_study(path: Path):
    """`study_file(path)` where an Optuna study exists; else nothing to do."""
    if not path.exists():
        return contextlib.nullcontext()
    return study_file(path)


def gpus_per_trial(config: ExperimentConfig) -> float:
    value = config.resources.gpus_per_trial
    if value == "auto":
        # Several trials per GPU: the MLP leaves a whole GPU mostly idle. This machine's torch
        # may lack CUDA where other nodes' has it: on several nodes, trust the cluster.
        usable = torch.cuda.is_available() or len(trial_nodes()) > 1
        return 0.25 if ray.cluster_resources().get("GPU", 0) and usable else 0
    return float(value)


def trials_at_once(config: ExperimentConfig) -> int:
    """How many trials the cluster's CPUs and GPUs hold at once, at the per-trial resources."""
    resources = ray.cluster_resources()
    fits = resources.get("CPU", 1) // config.resources.cpus_per_trial
    if gpus := gpus_per_trial(config):
        fits = min(fits, resources.get("GPU", 0) // gpus)
    return max(int(fits), 1)


def share_data(data: DataBundle) -> SharedData:
    """Put `data` in the object store once and point its arrays at that copy.

    Trials read the object store's pages zero-copy; after this the driver reads them too, and
    its own copy (the size of the dataset) is freed, so a run holds the data once."""
    shared = SharedData(ray.put(data))
    stored = shared.get()
    for field in dataclasses.fields(data):
        if isinstance(getattr(data, field.name), np.ndarray):
            setattr(data, field.name, getattr(stored, field.name))
    return shared


def make_trainable(config: ExperimentConfig, data: SharedData, evaluate_test: bool | None = None):
    """The trainable with its data and run settings bound, and its per-trial resources.
    `evaluate_test`: each trial reports test accuracy at its end (default: in a grid)."""
    cpus = config.resources.cpus_per_trial
    if evaluate_test is None:
        evaluate_test = config.search.kind == "grid"
    return tune.with_resources(
        # with_parameters hands every trial the data's object-store reference.
        tune.with_parameters(
            CifarTrainable,
            data=data,
            cpus=cpus,
            evaluate_test=evaluate_test,
        ),
        {"cpu": cpus, "gpu": gpus_per_trial(config)},
    )


def checkpointing(config: ExperimentConfig) -> tune.CheckpointConfig:
    """A checkpoint every epoch, the last two kept.

    Two: Tune deletes the one before the latest before its experiment state names the latest,
    and a driver killed in between resumes from the older one (with only one kept, that trial
    could never be restored). A 2048-wide MLP's is 75 MB. PBT copies other trials'
    checkpoints: keep a few more for it to exploit."""
    keep = 4 if config.scheduler.kind == "pbt" else 2
    return tune.CheckpointConfig(num_to_keep=keep, checkpoint_frequency=1, checkpoint_at_end=True)


def restore_tuner(
    location: str, trainable, callbacks: list[tune.Callback] | None, **options
) -> tune.Tuner:
    """The Tune run saved at `location`, its unfinished and errored trials to continue, watched
    by this session's `callbacks`.

    Tune restores the first session's callbacks from tuner.pkl (stale objects, and code the
    storage could hold), and `Tuner.restore` takes no others: the private `_local_tuner` is the
    only way to give them (tests/test_lifecycle.py pins it)."""
    tuner = tune.Tuner.restore(
        location, trainable=trainable, resume_unfinished=True, resume_errored=True, **options
    )
    tuner._local_tuner.get_run_config().callbacks = list(callbacks or [])
    return tuner


def run_tuner(
    config: ExperimentConfig,
    data: DataBundle | SharedData,
    run_dir: Path,
    plan: SearchPlan | None,
    *,
    reuse_actors: bool = True,
    phases: Phases | None = None,
    callbacks: list[tune.Callback] | None = None,
    verbose: bool = True,
) -> tune.ResultGrid:
    """Run every trial of the plan, or with no plan continue the run Tune saved in `run_dir`.

    `reuse_actors` saves each trial a process start (a visible share of a short grid);
    without it every trial has an actor of its own, named after it in the dashboard (an
    actor's repr is read once, when it starts).

    Tune's state lands in `run_dir/ray`, or `<run.storage>/<run name>/ray`. Resuming re-runs no
    finished trial; unfinished ones continue from their last checkpoint, and a searcher (Optuna's
    study) from its state.
    `phases` gets the time to put the data in the object store and the time of the trials.
    `data` already in the object store (`share_data`) is not put there again.
    """
    phases = Phases() if phases is None else phases
    # num_to_keep forces an experiment-state snapshot after each pruned checkpoint; locally that
    # is a small file write, so Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not verbose:
        # Tune's newer console output prints its experiment box and paths even at verbose=0;
        # the older one is silent there, leaving the console to our callbacks.
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    with phases.timed("data_to_object_store"):
        shared = data if isinstance(data, SharedData) else share_data(data)
        trainable = make_trainable(config, shared)
    if plan is None:
        # The searcher's saved study storage opens this run folder's study.db
        # (tuning.search.study). Restoring, Tune warns that it found no metrics for each trial
        # that never started: an interrupted run's normal state, not news (`--verbose` keeps it).
        analysis_log = "ray.tune.analysis.experiment_analysis"
        with (
            restoring_study(run_dir / STUDY_FILE),
            quieter(analysis_log, logging.ERROR, unless=verbose),
        ):
            tuner = restore_tuner(tune_location(config.run.storage, run_dir), trainable, callbacks)
            with phases.timed("trials"):
                return tuner.fit()
    storage_path, name = tune_storage(config.run.storage, run_dir)
    search_alg = plan.search_alg
    if isinstance(search_alg, Searcher):
        # Without a limit Tune keeps one trial of a searcher such as Optuna's pending at a
        # time: a trial of seconds (on a GPU) ends before the next one's actor has started,
        # and four trials per GPU ran one by one. Unset, the limit is what the resources hold.
        limit = config.search.max_concurrent or trials_at_once(config)
        search_alg = ConcurrencyLimiter(search_alg, max_concurrent=limit)
    tuner = tune.Tuner(
        trainable,
        param_space=plan.param_space,
        tune_config=tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            search_alg=search_alg,
            scheduler=plan.scheduler,
            num_samples=plan.num_samples,
            time_budget_s=config.search.time_budget_s,
            reuse_actors=reuse_actors,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config(config, name, storage_path, callbacks, verbose),
    )
    with phases.timed("trials"):
        return tuner.fit()


def run_config(
    config: ExperimentConfig, name: str, storage_path: str, callbacks, verbose: bool
) -> tune.RunConfig:
    """Where a Tune run keeps its state, its checkpoints and retries, and its console."""
    return tune.RunConfig(
        name=name,
        storage_path=storage_path,
        checkpoint_config=checkpointing(config),
        failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
        callbacks=callbacks,
        verbose=1 if verbose else 0,  # 0: the callbacks' compact view instead
    )


def best_result(results: tune.ResultGrid, config: ExperimentConfig) -> tune.Result | None:
    """The best trial by the run's metric at its last epoch; None when no trial reported it.
    Where trials train rung budgets of their own, the best of the furthest rung reached."""
    candidates = [
        r
        for r in results
        if isinstance(v := r.metrics.get(config.metric), (int, float)) and np.isfinite(v)
    ]
    if config.scheduler.retrains and candidates:

        def rung(r: tune.Result) -> int:
            epochs = r.metrics.get(TRAINING_ITERATION, 0)
            return rung_reached(epochs, epoch_budget(r.config, config.trial.epochs))

        furthest = max(map(rung, candidates))
        candidates = [r for r in candidates if rung(r) == furthest]
    if not candidates:
        return None
    pick = max if config.mode == "max" else min
    return pick(candidates, key=lambda r: r.metrics[config.metric])


def judge_best(
    results: tune.ResultGrid, config: ExperimentConfig, data: DataBundle
) -> tuple[tune.Result, float | None] | None:
    """The best trial and its last checkpoint's test accuracy: the one time a search's choice
    meets the test set when no finalists judge it."""
    best = best_result(results, config)
    if best is None:
        return None
    if best.checkpoint is None:
        return best, None
    return best, evaluate_checkpoint(best.checkpoint, best.config, data)["test_acc"]
