"""The command line both entry scripts share: parse, validate, load data, run, export, print."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError

from trainable.data import DataBundle, DataError, load_dataset
from trainable.settings import uses_import_path
from tuning.config import (
    ConfigError,
    ExperimentConfig,
    check_own_models,
    load_config,
    smoke_overrides,
)
from tuning.export import build_tables, run_metadata, write_config, write_run
from tuning.groups import verdict_lines, write_groups
from tuning.storage import can_resume, is_uri, prepare_storage, tune_location
from tuning.summary import finalist_summary, grid_table, node_counts, search_summary
from tuning.timing import Phases

REPO = Path(__file__).resolve().parent.parent
LOCALHOST = "127.0.0.1"
DASHBOARD_WARNING = (
    "warning: the Ray dashboard listens on {host} and has no authentication of its own: anyone "
    "who reaches that address can see and stop jobs. Prefer the default 127.0.0.1 with an SSH "
    "tunnel (ssh -L 8265:127.0.0.1:8265 HOST), or enable Ray's token authentication "
    "(RAY_AUTH_MODE=token, https://docs.ray.io/en/latest/ray-security/token-auth.html)."
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
        "--dashboard-host",
        default=LOCALHOST,
        help="address the local dashboard listens on (default 127.0.0.1: this machine only)",
    )
    return parser.parse_args(argv)


def resolve_run(args: argparse.Namespace, default_config: str) -> tuple[ExperimentConfig, Path]:
    """The validated config and the run folder; ConfigError for anything the user must fix."""
    results = Path(args.results_dir)
    if args.resume:
        return resumed_run(args, results)
    path = args.config or REPO / default_config
    # Absolute: the resolved config.yaml must still point at the data from another folder.
    overrides = [f"data.dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
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
    run_dir = results / (args.name or f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}")
    if run_dir.exists():
        raise ConfigError(
            f"run folder {run_dir} already exists; choose another --name, "
            "or add --resume to continue that run"
        )
    if config.run.storage:
        prepare_storage(config.run.storage, run_dir, resume=False)
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create --results-dir {results}: {err.strerror}") from None
    if not os.access(results, os.W_OK | os.X_OK):
        raise ConfigError(f"--results-dir {results} is not writable; pick a folder you can write")
    return config, run_dir


def resumed_run(args: argparse.Namespace, results: Path) -> tuple[ExperimentConfig, Path]:
    if not args.name:
        raise ConfigError("--resume needs the --name of the run to continue")
    if args.config or args.overrides or args.smoke or args.warm_start:
        raise ConfigError(
            "--resume continues a run as it was configured (its config.yaml): "
            "drop --config, --set, --smoke and --warm-start"
        )
    run_dir = results / args.name
    saved = run_dir / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"nothing to resume: {saved} does not exist; check --results-dir/--name")
    # The data or the storage may have moved since: the settings a resume may change.
    data = [f"data.dir={Path(args.data_dir).resolve()}"] if args.data_dir else []
    config = load_config(saved, data + storage_override(args))
    if config.run.storage:
        prepare_storage(config.run.storage, run_dir, resume=True)
    return config, run_dir


def storage_override(args: argparse.Namespace) -> list[str]:
    """`--storage` as a `--set` item; a path made absolute, as every node must read it alike."""
    if not args.storage:
        return []
    storage = args.storage if is_uri(args.storage) else str(Path(args.storage).resolve())
    return [f"run.storage={json.dumps(storage)}"]  # quoted: YAML would read `a: b` as a map


def dashboard_warning(args: argparse.Namespace) -> str | None:
    """A warning when the local dashboard would listen beyond this machine."""
    exposed = args.dashboard_host not in (LOCALHOST, "localhost")
    if exposed and not args.no_dashboard and not args.address:
        return DASHBOARD_WARNING.format(host=args.dashboard_host)
    return None


def main(default_config: str, argv: list[str] | None = None) -> int:
    """Run one experiment end to end; 0 on success, 2 on bad input, 1 when a trial failed."""
    args = parse_args(argv)
    # A model of the user's own imports from the working directory, as with `python -m`
    # (appended: it shadows nothing). Ray gives the trials the same directory.
    sys.path.append(os.getcwd())
    phases = Phases()
    try:
        config, run_dir = resolve_run(args, default_config)
        with phases.timed("data_load"):
            data = load_dataset(config.data)  # a wrong --data-dir fails here
        check_own_models(config, data.image_shape, len(data.classes))
    except (ConfigError, DataError) as err:
        return refuse(err)
    try:
        return run_experiment(args, config, data, run_dir, phases)
    except KeyboardInterrupt:  # a second Ctrl-C: Tune's first one already stopped gracefully
        print(f"\ninterrupted; continue with --resume --name {run_dir.name}", file=sys.stderr)
        return 130


def refuse(message: object, made: Path | None = None) -> int:
    """Print a bad-input error, remove the run folder `made` by this run if any; exit status 2."""
    if made is not None:
        shutil.rmtree(made)
    print(f"error: {message}", file=sys.stderr)
    return 2


def run_experiment(
    args: argparse.Namespace,
    config: ExperimentConfig,
    data: DataBundle,
    run_dir: Path,
    phases: Phases,
) -> int:
    """Plan the search, run it on Ray, judge the choice, export and print the summary.

    `phases` times each step; the times go into the tables' metadata (benchmarks/bench.py
    reads them) and onto the console."""
    # Ray's import is slow: here, after the input checks, so bad input is refused at once.
    import ray

    from tuning.cluster import check_run_storage, describe_cluster, start_ray
    from tuning.search import STUDY_FILE, build_plan
    from tuning.timing import TrainingSpans

    # A new run's folder was just made and holds nothing of the user's: refusals remove it.
    made = None if args.resume else run_dir
    if args.resume:
        plan = None  # Tune restores its searcher and scheduler from the run folder
        if not can_resume(config.run.storage, run_dir):
            return refuse(
                f"{tune_location(config.run.storage, run_dir)} holds no Tune state to "
                "resume (stopped before its first trial started, or --storage points "
                "elsewhere); start it again under another --name"
            )
    else:
        run_dir.mkdir(parents=True)
        write_config(run_dir, config)  # first: a killed run can be resumed from it
        try:
            plan = build_plan(config, run_dir)
        except ConfigError as err:
            return refuse(err, made)
        for note in plan.notes:
            print(f"note: {note}")
    if (run_dir / STUDY_FILE).exists():
        print(f"Optuna study: optuna-dashboard sqlite:///{(run_dir / STUDY_FILE).resolve()}")
    if warning := dashboard_warning(args):
        print(warning, file=sys.stderr)
    try:
        with phases.timed("ray_start"):
            dashboard = start_ray(
                args.address,
                dashboard=not args.no_dashboard,
                host=args.dashboard_host,
                ship=[model for model in config.models() if uses_import_path(model)],
            )
        if address := args.address or os.environ.get("RAY_ADDRESS"):
            print(f"joined the Ray cluster at {address}: {describe_cluster()}")
        # Before any trial: on several nodes, a folder only this machine sees fails late.
        for warning in check_run_storage(config.run.storage, run_dir):
            print(f"warning: {warning}", file=sys.stderr)
    except (ConfigError, DataError) as err:
        ray.shutdown()
        return refuse(err, made)
    print(
        f"data: {data.source}, {len(data.train_y)} train / {len(data.val_y)} val / "
        f"{len(data.test_y)} test images of {data.image_shape}, read in "
        f"{phases['data_load']:.1f} s"
    )
    if dashboard:
        print(f"Ray dashboard: {dashboard}")
    from tuning.finalists import finalise
    from tuning.runner import judge_best, run_tuner, share_data

    spans = TrainingSpans()
    try:
        with phases.timed("data_to_object_store"):
            shared = share_data(data)  # once: the finalists' trials read the same copy
        # Watched runs get an actor per trial, named in the dashboard; others reuse actors.
        results = run_tuner(
            config, shared, run_dir, plan, args.no_dashboard, phases, callbacks=[spans]
        )
        judged = None
        if config.search.kind != "grid":
            # A grid's trials report test accuracy themselves; a search's choice is judged here.
            with phases.timed("judge_best"):
                judged = judge_best(results, config, data)
        finals = finalise(config, shared, run_dir, results, args.no_dashboard, phases)
    finally:
        with phases.timed("ray_shutdown"):
            ray.shutdown()  # now, not at interpreter exit, where Ray takes seconds longer
    best, test_acc = judged or (None, None)
    best_id = Path(best.path).name if best else None
    with phases.timed("export"):
        epochs, trials = build_tables(results, config, {best_id: test_acc} if test_acc else {})
    metadata = run_metadata(config, data.fingerprint)
    metadata["timings_s"] = {**phases, "training_spans": spans.spans}
    write_run(run_dir, epochs, trials, config, metadata)
    final, groups = write_groups(run_dir, config, epochs, trials, finals, metadata)
    if config.search.kind == "grid":
        print(f"\n{grid_table(trials, verdict_lines(groups, config, finalists=False))}")
    else:
        value = best.metrics.get(config.metric) if best else None
        print(f"\n{search_summary(trials, best_id, value, config.trial.epochs, config.metric)}")
        if final is not None:
            verdict = verdict_lines(groups, config, finalists=True)
            print(f"\nfinalists over their re-runs:\n{finalist_summary(final, groups, verdict)}")
    if len(nodes := node_counts(trials)) > 1:
        print("trials per node: " + ", ".join(f"{node} {count}" for node, count in nodes.items()))
    if not args.no_report:
        from tuning.report import write_report

        write_report(run_dir)
    print(f"\ntime: {phases.line()}")
    print(f"results: {run_dir}/ (epochs.parquet, trials.parquet, report.md)")
    if final is not None and "interrupted" in final.column("status").to_pylist():
        print(f"finalisation interrupted; continue with --resume --name {run_dir.name}")
        return 130
    statuses = trials.column("status").to_pylist()
    statuses += final.column("status").to_pylist() if final is not None else []
    return 1 if "error" in statuses else 0
