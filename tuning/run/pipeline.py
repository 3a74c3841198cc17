"""One run as named steps, each with one job: plan the search, start Ray, train, record the
tables, judge the choice, finalise, summarise, report, and the exit status.

    run_experiment ─▶ plan ─▶ start_ray ─▶ train ─▶ record ─▶ judge ─▶ finalise ─▶ record
                   ─▶ compare ─▶ summarise ─▶ report ─▶ ending

The tables are recorded right after training, so a step that fails later loses no training.
What each step says goes through `logging` (the command line shows it as plain lines)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import ray
from ray import tune

from trainable.data import DataBundle
from trainable.settings import uses_import_path
from trainable.trainable import SharedData
from tuning.config import ConfigError, ExperimentConfig
from tuning.config.credentials import redact
from tuning.config.logs import quieter
from tuning.results.groups import verdict_lines, write_groups
from tuning.results.outcome import Outcome
from tuning.results.summary import (
    finalist_summary,
    grid_table,
    node_counts,
    run_header,
    search_summary,
)
from tuning.results.tables import run_metadata, write_run
from tuning.results.tune_logs import build_tables, final_table
from tuning.run import cluster, finalists, tuner
from tuning.run.folder import RunFolder
from tuning.run.progress import Progress
from tuning.run.signals import after_ray_start
from tuning.run.storage import can_resume, tune_location
from tuning.run.timing import Phases, TrainingSpans
from tuning.search.plan import SearchPlan, build_plan, searches_with_optuna
from tuning.search.study import StudyRecorder, close_study, dashboard_command

logger = logging.getLogger(__name__)

INTERRUPTED = 130  # the shell's status for a run stopped by SIGINT


@dataclass(frozen=True)
class Options:
    """How the command line asked for the run."""

    address: str | None  # an existing cluster, or None for a local Ray
    dashboard: bool  # a local Ray with its dashboard, and an actor of its own per trial
    dashboard_host: str
    verbose: bool  # Tune's and Ray's own console output instead of the compact view
    report: bool  # write report.md and its figures
    resume_command: str  # the command that continues this run


@dataclass
class Run:
    """One run as it passes through the steps: its inputs, then what each step leaves."""

    config: ExperimentConfig
    data: DataBundle
    folder: RunFolder
    phases: Phases
    options: Options
    shared: SharedData | None = None
    results: tune.ResultGrid | None = None
    watch: tuner.RunWatch | None = None
    spans: TrainingSpans = field(default_factory=TrainingSpans)
    best: tune.Result | None = None
    judged: dict[str, float] = field(default_factory=dict)  # trial id → test accuracy
    final: pa.Table | None = None  # the finalists' re-runs
    status: int = 0  # 1 once a step failed in a way that keeps the run's tables

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def interrupted(self) -> bool:
        return bool(self.watch and self.watch.interrupted)


@dataclass(frozen=True)
class Ending:
    """The run's exit status, and what to tell the user on the way out (or None)."""

    status: int
    notice: str | None = None


def run_experiment(
    *,
    config: ExperimentConfig,
    data: DataBundle,
    data_source: str,
    folder: RunFolder,
    phases: Phases,
    options: Options,
) -> Ending:
    """Every step in order; Ray is shut down however the run ends. `phases` times each step:
    the times go into the tables' metadata (benchmarks/bench.py reads them) and onto the
    console."""
    run = Run(config, data, folder, phases, options)
    search = plan(run)
    folder.check_data(data.fingerprint, data_source)
    try:
        start_ray(run)
        train(run, search)
        record(run)
        judge(run)
        finalise(run)
        with phases.timed("ray_shutdown"):
            ray.shutdown()  # before the last record, so that its time is in the metadata
        epochs, trials, metadata = record(run)
        groups = compare(run, epochs, trials, metadata)
        summarise(run, trials, groups)
        report(run)
        return ending(run, trials)
    finally:
        if ray.is_initialized():
            with phases.timed("ray_shutdown"):
                ray.shutdown()  # now, not at interpreter exit, where Ray takes seconds longer


def plan(run: Run) -> SearchPlan | None:
    """The searcher and scheduler of a new run; None for a resume (Tune restores its own)."""
    config, run_dir = run.config, run.run_dir
    if run.folder.resume:
        if not can_resume(config.run.storage, run_dir):
            raise ConfigError(
                f"{tune_location(config.run.storage, run_dir)} holds no Tune state to "
                "resume (stopped before its first trial started, or --storage points "
                "elsewhere); start it again under another --name"
            )
        return None
    search = build_plan(config, run_dir)
    for note in search.notes:
        logger.info("note: %s", note)
    return search


def start_ray(run: Run) -> None:
    """Start Ray or join the cluster, check the storage every node needs, and say what the run
    is about to do."""
    config, options = run.config, run.options
    with run.phases.timed("ray_start"):
        dashboard = cluster.start_ray(
            options.address,
            dashboard=options.dashboard,
            host=options.dashboard_host,
            ship=[model for model in config.models() if uses_import_path(model)],
            quiet=not options.verbose,
        )
    after_ray_start()
    if address := options.address or os.environ.get("RAY_ADDRESS"):
        logger.info("joined the Ray cluster at %s: %s", address, cluster.describe_cluster())
    # Before any trial: on several nodes, a folder only this machine sees fails late.
    for warning in cluster.check_run_storage(config.run.storage, run.run_dir):
        logger.warning(warning)
    at_once, gpus = tuner.trials_at_once(config), tuner.gpus_per_trial(config)
    logger.info(run_header(config, run.data, run.phases["data_load"], at_once, gpus))
    if dashboard:
        logger.info("Ray dashboard: %s", dashboard)
    logger.info("live study: %s", dashboard_command(run.run_dir))
    logger.info("results: %s/", run.run_dir)


def train(run: Run, search: SearchPlan | None) -> None:
    """Every trial of the plan (or the rest of a resumed run), watched by the callbacks."""
    config, options = run.config, run.options
    run.watch = tuner.RunWatch(run.folder.trials_started)
    callbacks: list = [run.spans, run.watch]
    if not options.verbose:
        callbacks.append(Progress.for_config(config))
    if not searches_with_optuna(config):  # Optuna's searcher records its own study
        callbacks.append(StudyRecorder(config, run.run_dir))
    callbacks += tracking(run, stage="search")
    with run.phases.timed("data_to_object_store"):
        run.shared = tuner.share_data(run.data)  # once: the finalists' trials read it too
    with quieter("optuna", unless=options.verbose):  # no line per study opened
        run.results = tuner.run_tuner(
            config,
            run.shared,
            run.run_dir,
            search,
            # Watched runs get an actor per trial, named in the dashboard; others reuse actors.
            reuse_actors=not options.dashboard,
            phases=run.phases,
            callbacks=callbacks,
            verbose=options.verbose,
        )
    close_study(run.run_dir, interrupted=run.interrupted)


def record(run: Run) -> tuple[pa.Table, pa.Table, dict]:
    """Write `epochs.parquet`, `trials.parquet` and config.yaml from what Tune left, with the
    test accuracies judged so far and every phase's time."""
    watch = run.watch
    with run.phases.timed("export"):
        epochs, trials = build_tables(
            run.results,
            run.config,
            judged=run.judged,
            interrupted=watch.unfinished if watch.interrupted else set(),
            trial_configs=watch.configs,
        )
    metadata = run_metadata(run.config, run.data.fingerprint)
    metadata["timings_s"] = {**run.phases, "training_spans": run.spans.spans}
    write_run(run.run_dir, epochs, trials, run.config, metadata)
    return epochs, trials, metadata


def judge(run: Run) -> None:
    """The search's choice: its best trial by the metric at its last epoch. Without finalists,
    its last checkpoint is evaluated once on test; with them, their re-runs over fresh seeds
    judge it instead. (A grid's trials report test accuracy themselves.)"""
    if run.config.search.kind == "grid" or run.interrupted:
        return
    if run.config.final.top_k:
        run.best = tuner.best_result(run.results, run.config)
        return
    try:
        with run.phases.timed("judge_best"):
            chosen = tuner.judge_best(run.results, run.config, run.data)
    except Exception as err:  # noqa: BLE001 - the tables are written; say why, exit 1
        logger.warning(
            "could not evaluate the chosen trial on the test set (%s: %s); test_acc stays empty",
            type(err).__name__,
            redact(str(err)),
        )
        run.status = 1
        return
    if chosen is not None:
        run.best, test_acc = chosen
        if test_acc is not None:
            run.judged = {Path(run.best.path).name: test_acc}


def finalise(run: Run) -> None:
    """The search's best few configurations, trained again over fresh seeds (config.final)."""
    if run.interrupted:
        return
    options = run.options
    finals = finalists.finalise(
        run.config,
        run.shared,
        run.run_dir,
        run.results,
        reuse_actors=not options.dashboard,
        phases=run.phases,
        verbose=options.verbose,
        callbacks=tracking(run, stage="finalists"),
    )
    if finals is not None:
        chosen, results = finals
        run.final = final_table(results, chosen, run.config)


def compare(run: Run, epochs: pa.Table, trials: pa.Table, metadata: dict) -> list[dict]:
    """`final.parquet` and `groups.parquet`: the groups compared over their seeds; in MLflow
    too where the run goes there."""
    groups = write_groups(
        run.run_dir, run.config, epochs=epochs, trials=trials, final=run.final, metadata=metadata
    )
    if uri := run.config.run.mlflow:
        from tuning.run.tracking import record_groups

        verdict = verdict_lines(groups, run.config, finalists=run.final is not None)
        record_groups(uri, run.run_dir.name, groups, verdict)
    return groups


def tracking(run: Run, *, stage: str) -> list[tune.Callback]:
    """The callback that sends each trial of `stage` to MLflow, where `run.mlflow` is set."""
    if not (uri := run.config.run.mlflow):
        return []
    # Here, not at the top: MLflow is an optional extra.
    from tuning.run.tracking import MlflowTrials

    epochs = run.config.final_epochs if stage == "finalists" else run.config.trial.epochs
    return [MlflowTrials(uri, run.run_dir.name, stage, epochs)]


def summarise(run: Run, trials: pa.Table, groups: list[dict]) -> None:
    """The console's tables: the grid beside the original's, or the search's choice and its
    finalists; then the trials per node of a cluster."""
    config = run.config
    if config.search.kind == "grid":
        logger.info("\n%s", grid_table(trials, verdict_lines(groups, config, finalists=False)))
    else:
        best_id = Path(run.best.path).name if run.best else None
        value = run.best.metrics.get(config.metric) if run.best else None
        summary = search_summary(
            trials, best_id, value, config.trial.epochs, config.metric,
            rungs=config.scheduler.rungs(config.trial.epochs),
            retrains=config.scheduler.retrains, finalists=run.final is not None,
        )  # fmt: skip
        logger.info("\n%s", summary)
        if run.final is not None:
            verdict = verdict_lines(groups, config, finalists=True)
            table = finalist_summary(run.final, groups, verdict)
            logger.info("\nfinalists over their re-runs:\n%s", table)
    # A local resume gets a new node id: one machine would show as two nodes.
    joined = run.options.address or os.environ.get("RAY_ADDRESS")
    if joined and len(nodes := node_counts(trials)) > 1:
        logger.info(
            "trials per node: %s", ", ".join(f"{node} {count}" for node, count in nodes.items())
        )


def report(run: Run) -> None:
    """`report.md` and its figures; a warning and exit status 1 when that fails (the tables
    stay)."""
    if run.options.report:
        # matplotlib loads here, once the trials are gone: the run's peak memory stays theirs.
        from tuning.results.report import write_report

        try:
            write_report(run.run_dir)
        except Exception as err:  # noqa: BLE001 - a report is a view of the tables already written
            logger.warning("no report written (%s: %s)", type(err).__name__, err)
            run.status = 1
    logger.info("\ntime: %s", run.phases.line())
    logger.info("results: %s/ (epochs.parquet, trials.parquet, report.md)", run.run_dir)


def ending(run: Run, trials: pa.Table) -> Ending:
    """130 when interrupted (the resume command to say), 1 when a trial or a step failed, else
    0."""
    resume = run.options.resume_command
    if run.interrupted:
        left = len(run.watch.unfinished)
        notice = f"interrupted: {left} trials unfinished (status interrupted); continue with"
        return Ending(INTERRUPTED, f"\n{notice}:\n  {resume}")
    statuses = trials.column("status").to_pylist()
    if run.final is not None:
        final_statuses = run.final.column("status").to_pylist()
        if Outcome.INTERRUPTED in final_statuses:
            return Ending(INTERRUPTED, f"\nfinalisation interrupted; continue with:\n  {resume}")
        statuses += final_statuses
    return Ending(max(run.status, 1 if Outcome.ERROR in statuses else 0))
