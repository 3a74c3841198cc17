"""Run one Tuner over the experiment's search space."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher

from trainable.data import DataBundle
from trainable.trainable import CifarTrainable, SharedData, evaluate_checkpoint
from tuning.cluster import trial_nodes
from tuning.config import ExperimentConfig
from tuning.search import SearchPlan
from tuning.storage import tune_location, tune_storage
from tuning.timing import Phases


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


def run_tuner(
    config: ExperimentConfig,
    data: DataBundle | SharedData,
    run_dir: Path,
    plan: SearchPlan | None,
    reuse_actors: bool = True,
    phases: Phases | None = None,
    callbacks: list[tune.Callback] | None = None,
) -> tune.ResultGrid:
    """Run every trial of the plan, or with no plan continue the run Tune saved in `run_dir`.

    `reuse_actors` saves each trial a process start (3.5 s of a 49 s seed-0 grid on 2 cores);
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
    # costs ~10 ms, so Tune's warning about it is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    with phases.timed("data_to_object_store"):
        shared = data if isinstance(data, SharedData) else share_data(data)
        trainable = make_trainable(config, shared)
    if plan is None:
        tuner = tune.Tuner.restore(
            tune_location(config.run.storage, run_dir),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
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
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=tune.CheckpointConfig(
                # The latest is all a restart or resume needs (a 2048-wide MLP's is 75 MB);
                # PBT copies other trials' checkpoints, so keep a few more for it to exploit.
                num_to_keep=4 if config.scheduler.kind == "pbt" else 1,
                checkpoint_frequency=1,
                checkpoint_at_end=True,
            ),
            failure_config=tune.FailureConfig(max_failures=config.run.max_failures),
            callbacks=callbacks,
            verbose=1,
        ),
    )
    with phases.timed("trials"):
        return tuner.fit()


def judge_best(
    results: tune.ResultGrid, config: ExperimentConfig, data: DataBundle
) -> tuple[tune.Result, float | None] | None:
    """The best trial by the configured metric at its last epoch, and its last checkpoint's
    test accuracy: the one time a search's choice meets the test set."""
    try:
        best = results.get_best_result(scope="last", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported the metric
        return None
    if best.checkpoint is None:
        return best, None
    return best, evaluate_checkpoint(best.checkpoint, best.config, data)["test_acc"]
