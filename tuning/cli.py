"""The command line both entry scripts share: parse, validate, load data, run, export, print."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from datetime import datetime
from functools import partial
from pathlib import Path

from pydantic import ValidationError

from trainable.data import DataBundle, DataError, DataLocation, locate_dataset, read_dataset
from trainable.settings import uses_import_path
from tuning.config import (
    ConfigError,
    ExperimentConfig,
    check_own_models,
    load_config,
    smoke_overrides,
)
from tuning.credentials import check_no_credentials, redact
from tuning.export import build_tables, run_metadata, write_run
from tuning.groups import verdict_lines, write_groups
from tuning.run_folder import RunFolder
from tuning.storage import can_resume, is_uri, prepare_storage, tune_location
from tuning.summary import (
    finalist_summary,
    grid_table,
    node_counts,
    run_header,
    search_summary,
)
from tuning.timing import Phases

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
DASHBOARD_WARNING = (
    "warning: the Ray dashboard listens on {host} and has no authentication of its own: anyone "
    "who reaches that address can see and stop jobs. Prefer the default 127.0.0.1 with an SSH "
    "tunnel (ssh -L 8265:127.0.0.1:8265 HOST), or enable Ray's token authentication "
    "(RAY_AUTH_MODE=token, https://docs.ray.io/en/latest/ray-security/token-auth.html)."
)
AUTH_WARNING = (
    "warning: RAY_AUTH_MODE=disabled: the local Ray starts without token authentication, and "
    "its ports listen on this machine's network address, where anyone who reaches them can "
    "run code as you. Unset RAY_AUTH_MODE (token authentication is Ray's default) unless the "
    "machine is on a network only you use."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", help="experiment YAML (default: the script's own)")
    parser.add_argument("--data-dir", help="CIFAR-10 files or an image-folder tree (data.dir)")
    parser.add_argument("--results-dir", default="results", help="where run folders go")
    parser.add_argument("--name", help="run folder name (default: config name + timestamp)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted key, e.g. --set trial.epochs=3 (repeatable)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run: 2 trials, 2 epochs, small data (synthetic unless --data-dir is given)",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run named --name")
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument(
        "--storage",
        help="where Tune keeps trial state and checkpoints (run.storage): a folder every node "
        "sees, or a URI such as s3://bucket/runs (default: the run folder)",
    )
    parser.add_argument(
        "--warm-start",
        action="append",
        default=[],
        metavar="RUN_DIR",
        help="an Optuna search starts from this earlier run's finished trials (repeatable; "
        "search.warm_start)",
    )
    parser.add_argument("--no-dashboard", action="store_true", help="start Ray without dashboard")
    parser.add_argument("--no-report", action="store_true", help="skip report.md and figures")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="Tune's and Ray's own console output instead of the compact progress view",
    )
    parser.add_argument(
        "--dashboard-host",
        default=LOCALHOST,
        help="address the local dashboard listens on (default 127.0.0.1: this machine only)",
    )
    return parser.parse_args(argv)


def open_run(args: argparse.Namespace, default_config: str) -> tuple[ExperimentConfig, RunFolder]:
    """The validated config and the run's folder (a resumed one locked at once, a new one not
    made yet); ConfigError for anything the user must fix."""
    results = Path(args.results_dir)
    if args.resume:
        if args.name is not None and (
            args.config or args.overrides or args.smoke or args.warm_start
        ):
            raise ConfigError(
                "--resume continues a run as it was configured (its config.yaml): "
                "drop --config, --set, --smoke and --warm-start"
            )
        folder = RunFolder.existing(results, args.name)
        try:
            # The data or the storage may have moved since: the settings a resume may change.
            data = [f"data.dir={os.path.abspath(args.data_dir)}"] if args.data_dir else []
            config = load_config(folder.path / "config.yaml", data + storage_override(args))
            if config.run.storage:
                prepare_storage(config.run.storage, folder.path, resume=True)
        except ConfigError:
            folder.close()
            raise
        return config, folder
    path = args.config or REPO / default_config
    # Absolute: the resolved config.yaml must still point at the data from another folder.
    overrides = [f"data.dir={os.path.abspath(args.data_dir)}"] if args.data_dir else []
    if args.smoke:
        overrides += smoke_overrides(load_config(path), synthetic=not args.data_dir)
    config = load_config(path, overrides + args.overrides + storage_override(args))
    if args.warm_start:
        try:  # absolute: config.yaml must find them from anywhere
            config.search.warm_start = [
                *config.search.warm_start,
                *(str(Path(d).resolve()) for d in args.warm_start),
            ]
            config = ExperimentConfig.model_validate(config.model_dump())
        except ValidationError as err:
            message = err.errors()[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"--warm-start: {message}") from None
    name = f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}" if args.name is None else args.name
    folder = RunFolder.new(results, name)
    if config.run.storage:
        prepare_storage(config.run.storage, folder.path, resume=False)
    return config, folder


def storage_override(args: argparse.Namespace) -> list[str]:
    """`--storage` as a `--set` item; a path made absolute, as every node must read it alike."""
    if not args.storage:
        return []
    check_no_credentials(args.storage)
    storage = args.storage if is_uri(args.storage) else os.path.abspath(args.storage)
    return [f"run.storage={json.dumps(storage)}"]  # quoted: YAML would read `a: b` as a map


def dashboard_warning(args: argparse.Namespace) -> str | None:
    """A warning when the local dashboard would listen beyond this machine."""
    exposed = args.dashboard_host not in (LOCALHOST, "localhost")
    if exposed and not args.no_dashboard and not args.address:
        return DASHBOARD_WARNING.format(host=args.dashboard_host)
    return None


def auth_warning(args: argparse.Namespace) -> str | None:
    """A warning when a local Ray would start with its token authentication turned off."""
    local = not (args.address or os.environ.get("RAY_ADDRESS"))
    if local and os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return AUTH_WARNING
    return None


def main(default_config: str, argv: list[str] | None = None) -> int:
    """Run one experiment end to end: 0 on success, 2 on bad input, 130 when interrupted,
    1 when a trial failed or the run could not be judged or reported."""
    args = parse_args(argv)
    # A model of the user's own imports from the working directory, as with `python -m`
    # (appended: it shadows nothing). Ray gives the trials the same directory.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    phases = Phases()
    try:
        config, folder = open_run(args, default_config)
    except ConfigError as err:
        return refuse(err)
    # The entry script as it was started (python -m tuning.run_grid gives its path too).
    resume = folder.resume_command(sys.argv[0], args.address, dashboard=not args.no_dashboard)
    with folder, sigterm_as_ctrl_c():  # the lock for the whole run; a failed start cleans up
        try:
            with phases.timed("data_load"):
                location = locate_dataset(config.data)  # a wrong --data-dir fails here
                # A resume refuses other data before its split can fail on it.
                check = partial(folder.check_data, source=describe_data(location))
                data = read_dataset(location, check if folder.resume else None)
            check_own_models(config, data.image_shape, len(data.classes))
            if not folder.resume:
                folder.make(config)
            return run_experiment(args, config, location, data, folder, phases, resume)
        except (ConfigError, DataError) as err:
            folder.close(failed=True)
            return refuse(err)
        except KeyboardInterrupt:  # a second Ctrl-C, or one before Tune's handler was set
            if folder.made and not folder.started:
                folder.close(failed=True)
                print("\ninterrupted before any trial started; nothing to resume", file=sys.stderr)
            else:
                print(f"\ninterrupted; continue with:\n  {resume}", file=sys.stderr)
            return 130


def ctrl_c(signum: int, frame) -> None:
    """Do what Ctrl-C does now: the handler Tune sets while trials train (stop them, keep the
    state), else a KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if not callable(handler):
        raise KeyboardInterrupt
    handler(signal.SIGINT, frame)


@contextlib.contextmanager
def sigterm_as_ctrl_c():
    """SIGTERM (a scheduler preempting the job, `kill`) ends the run as Ctrl-C does: its tables
    written, the resume command printed. Ray's start sets a handler of its own, replaced again
    in `run_experiment`."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, ctrl_c)
    try:
        yield
    finally:
        if previous is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def refuse(message: object) -> int:
    """Print a bad-input error; exit status 2."""
    print(f"error: {redact(str(message))}", file=sys.stderr)
    return 2


def run_experiment(
    args: argparse.Namespace,
    config: ExperimentConfig,
    location: DataLocation,
    data: DataBundle,
    folder: RunFolder,
    phases: Phases,
    resume: str,
) -> int:
    """Plan the search, start Ray, train, export, judge and report.

    `phases` times each step; the times go into the tables' metadata (benchmarks/bench.py
    reads them) and onto the console."""
    # Ray's import is slow: here, after the input checks, so bad input is refused at once.
    import ray

    from tuning.cluster import check_run_storage, describe_cluster, start_ray
    from tuning.search import build_plan

    run_dir = folder.path
    if folder.resume:
        plan = None  # Tune restores its searcher and scheduler from the run folder
        if not can_resume(config.run.storage, run_dir):
            raise ConfigError(
                f"{tune_location(config.run.storage, run_dir)} holds no Tune state to "
                "resume (stopped before its first trial started, or --storage points "
                "elsewhere); start it again under another --name"
            )
    else:
        plan = build_plan(config, run_dir)
        for note in plan.notes:
            print(f"note: {note}")
    for warning in (dashboard_warning(args), auth_warning(args)):
        if warning:
            print(warning, file=sys.stderr)
    folder.check_data(data.fingerprint, describe_data(location))
    try:
        with phases.timed("ray_start"):
            dashboard = start_ray(
                args.address,
                dashboard=not args.no_dashboard,
                host=args.dashboard_host,
                ship=[model for model in config.models() if uses_import_path(model)],
                quiet=not args.verbose,
            )
        signal.signal(signal.SIGTERM, ctrl_c)  # Ray's start replaced it with an abrupt exit
        if address := args.address or os.environ.get("RAY_ADDRESS"):
            print(f"joined the Ray cluster at {address}: {describe_cluster()}")
        # Before any trial: on several nodes, a folder only this machine sees fails late.
        for warning in check_run_storage(config.run.storage, run_dir):
            print(f"warning: {warning}", file=sys.stderr)
        from tuning.runner import gpus_per_trial, trials_at_once
        from tuning.study import dashboard_command

        at_once, gpus = trials_at_once(config), gpus_per_trial(config)
        print(run_header(config, data, phases["data_load"], at_once, gpus))
        if dashboard:
            print(f"Ray dashboard: {dashboard}")
        print(f"live study: {dashboard_command(run_dir)}")
        print(f"results: {run_dir}/")
        return train_and_export(args, config, data, folder, plan, phases, resume)
    finally:
        if ray.is_initialized():
            with phases.timed("ray_shutdown"):
                ray.shutdown()  # now, not at interpreter exit, where Ray takes seconds longer


def describe_data(location: DataLocation) -> str:
    return f"{location.root} ({location.source})" if location.root else location.source


def train_and_export(
    args: argparse.Namespace,
    config: ExperimentConfig,
    data: DataBundle,
    folder: RunFolder,
    plan,
    phases: Phases,
    resume: str,
) -> int:
    """Run the trials, write the tables at once, then judge the search's choice and report.

    The tables come first: a judge or a report that fails later loses no training."""
    import optuna

    from tuning.finalists import finalise
    from tuning.progress import Progress
    from tuning.runner import RunWatch, judge_best, run_tuner, share_data
    from tuning.search import searches_with_optuna
    from tuning.study import StudyRecorder, close_study
    from tuning.timing import TrainingSpans

    run_dir = folder.path
    spans, watch = TrainingSpans(), RunWatch(folder.trials_started)
    callbacks: list = [spans, watch]
    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per study created
        callbacks.append(Progress.for_config(config))
    if not searches_with_optuna(config):  # Optuna's searcher records its own study
        callbacks.append(StudyRecorder(config, run_dir))
    with phases.timed("data_to_object_store"):
        shared = share_data(data)  # once: the finalists' trials read the same copy
    # Watched runs get an actor per trial, named in the dashboard; others reuse actors.
    results = run_tuner(
        config,
        shared,
        run_dir,
        plan,
        args.no_dashboard,
        phases,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    close_study(run_dir, interrupted=watch.interrupted)
    interrupted = watch.unfinished if watch.interrupted else set()

    def export(judged: dict[str, float]) -> tuple:
        with phases.timed("export"):
            epochs, trials = build_tables(results, config, judged, interrupted, watch.configs)
        metadata = run_metadata(config, data.fingerprint)
        metadata["timings_s"] = {**phases, "training_spans": spans.spans}
        write_run(run_dir, epochs, trials, config, metadata)
        return epochs, trials, metadata

    export({})
    status, best, test_acc = 0, None, None
    if config.search.kind != "grid" and not watch.interrupted:
        # A grid's trials report test accuracy themselves; a search's choice is judged here.
        try:
            with phases.timed("judge_best"):
                best, test_acc = judge_best(results, config, data) or (None, None)
        except Exception as err:  # noqa: BLE001 - the tables are written; say why, exit 1
            print(
                f"warning: could not evaluate the chosen trial on the test set "
                f"({type(err).__name__}: {redact(str(err))}); test_acc stays empty",
                file=sys.stderr,
            )
            status = 1
    best_id = Path(best.path).name if best else None
    finals = None
    if not watch.interrupted:
        # The search's best few, trained again over fresh seeds (config.final).
        finals = finalise(config, shared, run_dir, results, args.no_dashboard, phases, args.verbose)
    import ray

    with phases.timed("ray_shutdown"):
        ray.shutdown()  # before the final write, so that its time is in the metadata
    epochs, trials, metadata = export({best_id: test_acc} if test_acc is not None else {})
    final, groups = write_groups(run_dir, config, epochs, trials, finals, metadata)
    if config.search.kind == "grid":
        print(f"\n{grid_table(trials, verdict_lines(groups, config, finalists=False))}")
    else:
        value = best.metrics.get(config.metric) if best else None
        print(f"\n{search_summary(trials, best_id, value, config.trial.epochs, config.metric)}")
        if final is not None:
            verdict = verdict_lines(groups, config, finalists=True)
            print(f"\nfinalists over their re-runs:\n{finalist_summary(final, groups, verdict)}")
    joined = args.address or os.environ.get("RAY_ADDRESS")  # a local resume gets a new node id
    if joined and len(nodes := node_counts(trials)) > 1:
        print("trials per node: " + ", ".join(f"{node} {count}" for node, count in nodes.items()))
    if not args.no_report:
        status = max(status, report(run_dir))
    print(f"\ntime: {phases.line()}")
    print(f"results: {run_dir}/ (epochs.parquet, trials.parquet, report.md)")
    if watch.interrupted:
        print(
            f"\ninterrupted: {len(interrupted)} trials unfinished (status interrupted); "
            f"continue with:\n  {resume}",
            file=sys.stderr,
        )
        return 130
    statuses = trials.column("status").to_pylist()
    if final is not None:
        if "interrupted" in final.column("status").to_pylist():
            print(f"\nfinalisation interrupted; continue with:\n  {resume}", file=sys.stderr)
            return 130
        statuses += final.column("status").to_pylist()
    return max(status, 1 if "error" in statuses else 0)


def report(run_dir: Path) -> int:
    """Write report.md and its figures; 1 with a warning when that fails (the tables stay)."""
    from tuning.report import write_report

    try:
        write_report(run_dir)
    except Exception as err:  # noqa: BLE001 - a report is a view of the tables already written
        print(f"warning: no report written ({type(err).__name__}: {err})", file=sys.stderr)
        return 1
    return 0
