"""A run in the MLflow tracking server or store a team already uses (`run.mlflow`).

One MLflow experiment per run, named after it; one MLflow run per trial (the search's and the
finalists'), its settings as params, its metrics at every epoch as steps, its outcome as the
tag `status` and the run's state; then one run `groups` with each compared group's mean,
interval and p-value and the verdict, where a user looks for the winner.

Written from the driver through MLflow's client. Ray's `MLflowLoggerCallback` would start a new
MLflow run for every trial of a resumed run (duplicates) and lets a server that goes away stop
the run; here a resumed trial finds its MLflow run by the tag `tune_trial_id`, and a failing
server costs a warning, not the run or its tables.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

from ray import tune

from tuning.config import ConfigError
from tuning.config.keys import TUNE_TRIAL_MARK, flat_settings
from tuning.results.outcome import epoch_budget, trial_outcome

logger = logging.getLogger(__name__)

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "test_loss")
STAGE = "stage"  # tag: search, finalists or groups
# MLflow retries a failed request 7 times with back-off by default, for minutes: a server that
# went away would stall the run's driver loop. The user's own settings win.
CLIENT_ENVIRONMENT = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def mlflow_client(uri: str):
    """MLflow's client for `uri`; ConfigError when MLflow is not installed."""
    for key, value in CLIENT_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError(
            'run.mlflow needs MLflow\'s client: pip install -e ".[mlflow]" (or pip install mlflow)'
        ) from None
    return MlflowClient(tracking_uri=uri)


def tracking_client(uri: str):
    """MLflow's client for `uri`, checked to answer; ConfigError when MLflow is not installed
    or nothing answers there (before anything of the run is made)."""
    client = mlflow_client(uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any failure to reach it is the user's to fix
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(
            f"the MLflow tracking server or store at run.mlflow={uri} does not answer "
            f"({reason[:200]}); start it (mlflow server --host 127.0.0.1 --port 5000) or fix "
            "the URI"
        ) from None
    return client


class Tracker:
    """The run's MLflow experiment, found or made by name. Every call that fails warns once per
    kind of call and lets the run go on; with no experiment (the server went away), nothing is
    sent."""

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri, self.experiment = uri, experiment
        self.failed: set[str] = set()
        self.client = mlflow_client(uri)
        self.experiment_id = self.call("open the run's experiment", self._experiment_id)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found else self.client.create_experiment(self.experiment)

    def call(self, what: str, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except Exception as err:  # noqa: BLE001 - tracking must not cost the run
            if what not in self.failed:
                self.failed.add(what)
                logger.warning(
                    "MLflow at %s failed to %s (%s: %s); the run and its tables go on",
                    self.uri, what, type(err).__name__, str(err).splitlines()[0][:200],
                )  # fmt: skip
            return None

    def run_for(self, key: str, name: str, tags: dict[str, str]) -> tuple[str | None, bool]:
        """The id of the MLflow run tagged `tune_trial_id = key` (a resume finds the one it
        made before), made with `tags` where there is none yet; and whether it was made now."""
        if self.experiment_id is None:
            return None, False
        runs = self.call(
            "find a run",
            lambda: self.client.search_runs(
                [self.experiment_id], f"tags.{TUNE_TRIAL_MARK} = '{key}'", max_results=1
            ),
        )
        if runs:
            return runs[0].info.run_id, False
        if runs is None:  # no answer: don't make a duplicate
            return None, False
        created = self.call(
            "create a run",
            lambda: self.client.create_run(
                self.experiment_id, run_name=name, tags={TUNE_TRIAL_MARK: key, **tags}
            ),
        )
        return (created.info.run_id, True) if created else (None, False)

    def log(self, run_id: str | None, *, params=None, metrics=None, tags=None, step=0) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.call(
            "log to a run",
            lambda: self.client.log_batch(
                run_id,
                metrics=[
                    Metric(key, float(value), now, step)
                    for key, value in (metrics or {}).items()
                    if isinstance(value, (int, float)) and math.isfinite(value)
                ],
                params=[Param(key, str(value)) for key, value in (params or {}).items()],
                tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
            ),
        )

    def end(self, run_id: str | None, status: str) -> None:
        if run_id is not None:
            self.call("end a run", lambda: self.client.set_terminated(run_id, status))


class MlflowTrials(tune.Callback):
    """Each Tune trial as an MLflow run of the tracker's experiment (`stage`: search or
    finalists)."""

    def __init__(self, uri: str, experiment: str, stage: str, epochs: int) -> None:
        self.uri, self.experiment, self.stage, self.epochs = uri, experiment, stage, epochs

    def setup(self, **info) -> None:
        # Here, not in __init__: Tune pickles its callbacks with the run.
        self.tracker = Tracker(self.uri, self.experiment)
        self.runs: dict[str, str | None] = {}
        # Per trial whose MLflow run an earlier session made: the last epoch logged there.
        self.logged_before: dict[str, int] = {}

    def _run(self, trial) -> str | None:
        if trial.trial_id not in self.runs:
            run_id, made = self.tracker.run_for(trial.trial_id, trial.trial_id, {STAGE: self.stage})
            if made:  # params are set once (PBT's later changes are in the tables)
                params = {k: v for k, v in flat_settings(trial.config).items() if v is not None}
                self.tracker.log(run_id, params=params)
            elif run_id is not None:
                last = self.tracker.call("read a run's epochs", lambda: self._last_epoch(run_id))
                self.logged_before[trial.trial_id] = last or 0
            self.runs[trial.trial_id] = run_id
        return self.runs[trial.trial_id]

    def _last_epoch(self, run_id: str) -> int:
        history = self.tracker.client.get_metric_history(run_id, "train_loss")
        return max((metric.step for metric in history), default=0)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self._run(trial)
        self.tracker.call("mark a run running", lambda: self._running(run_id))

    def _running(self, run_id: str | None) -> None:
        if run_id is not None:
            self.tracker.client.update_run(run_id, status="RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id, epoch = self._run(trial), result.get("epoch", 0)
        # A resumed trial may train again an epoch the interrupted session logged (one that
        # ended after its last checkpoint): each epoch is a step once.
        if epoch <= self.logged_before.get(trial.trial_id, 0):
            return
        metrics = {key: result.get(key) for key in METRICS}
        self.tracker.log(run_id, metrics=metrics, step=epoch)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=True)

    def _end(self, trial, error: bool) -> None:
        last = trial.last_result or {}
        outcome = trial_outcome(
            error=error,
            diverged=bool(last.get("diverged")),
            epochs=last.get("epoch", 0),
            budget=epoch_budget(trial.config, self.epochs),
        )
        run_id = self._run(trial)
        self.tracker.log(run_id, tags={"status": outcome.value})
        self.tracker.end(run_id, "FAILED" if error else "FINISHED")

    def on_experiment_end(self, trials, **info) -> None:
        # Trials an interruption left: their MLflow runs stop as killed; a resume reopens them.
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                self.tracker.log(self.runs.get(trial.trial_id), tags={"status": "interrupted"})
                self.tracker.end(self.runs.get(trial.trial_id), "KILLED")


def record_groups(uri: str, experiment: str, groups: list[dict], verdict: list[str]) -> None:
    """The compared groups (a grid's points, or the finalists) as one MLflow run `groups`:
    each group's mean, interval and p-value by rank, its label and the verdict as tags."""
    if not groups:
        return
    tracker = Tracker(uri, experiment)
    run_id, _ = tracker.run_for("groups", "groups", {STAGE: "groups"})
    metrics, tags = {}, {"winner": groups[0]["group"], "verdict": " ".join(verdict)[:5000]}
    for row in groups:
        prefix = f"rank{row['rank']}"
        tags[f"{prefix}.group"] = row["group"]
        metrics[f"{prefix}.n"] = row["n"]
        for key in ("mean", "ci_low", "ci_high", "p_vs_best"):
            for measure in ("val_acc", "test_acc"):
                metrics[f"{prefix}.{measure}_{key}"] = row.get(f"{measure}_{key}")
    tracker.log(run_id, metrics=metrics, tags=tags)
    tracker.end(run_id, "FINISHED")
