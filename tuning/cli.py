"""The command line both entry scripts share: parse, validate, load data, run, export, print."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path

from trainable.data import DataError, load_dataset
from tuning.config import ConfigError, ExperimentConfig, load_config, smoke
from tuning.export import build_tables, run_metadata, write_run
from tuning.summary import grid_table, search_summary

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None, default_config: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / default_config), help="experiment YAML")
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
    parser.add_argument("--address", help="join this Ray cluster (default: RAY_ADDRESS or local)")
    parser.add_argument("--no-dashboard", action="store_true", help="start Ray without dashboard")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.overrides)
    if args.data_dir:
        overrides.insert(0, f"data.dir={args.data_dir}")
    config = load_config(args.config, overrides)
    return smoke(config, synthetic=not args.data_dir) if args.smoke else config


def prepare_run_dir(args: argparse.Namespace, config: ExperimentConfig) -> Path:
    """The new run folder's path; refuses to overwrite a run or to write where it cannot."""
    name = args.name or f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"
    results = Path(args.results_dir)
    run_dir = results / name
    if run_dir.exists():
        raise ConfigError(f"run folder {run_dir} already exists; choose another --name")
    try:
        results.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create --results-dir {results}: {err.strerror}") from None
    if not os.access(results, os.W_OK | os.X_OK):
        raise ConfigError(f"--results-dir {results} is not writable; pick a folder you can write")
    return run_dir


def main(default_config: str, argv: list[str] | None = None) -> int:
    """Run one experiment end to end; 0 on success, 2 on bad input, 1 when a trial failed."""
    args = parse_args(argv, default_config)
    try:
        config = resolve_config(args)
        run_dir = prepare_run_dir(args, config)
        start = time.perf_counter()
        data = load_dataset(config.data.spec())
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"data: {data.source}, {len(data.train_y)} train / {len(data.val_y)} val / "
        f"{len(data.test_y)} test images of {data.image_shape}, loaded in "
        f"{time.perf_counter() - start:.1f} s"
    )

    # Ray's import is slow: after the input checks, so bad input is refused at once.
    import ray

    from tuning.runner import judge_best, run_tuner, start_ray
    from tuning.search import build_plan

    run_dir.mkdir(parents=True)
    try:
        plan = build_plan(config, run_dir)
    except ConfigError as err:
        shutil.rmtree(run_dir)  # just made, holds nothing of the user's
        print(f"error: {err}", file=sys.stderr)
        return 2
    for note in plan.notes:
        print(f"note: {note}")
    dashboard = start_ray(args.address, dashboard=not args.no_dashboard)
    if dashboard:
        print(f"Ray dashboard: {dashboard}")
    try:
        results = run_tuner(config, data, run_dir, plan)
        judged = judge_best(results, config, data) if config.search.kind != "grid" else None
    finally:
        ray.shutdown()  # now, not at interpreter exit, where Ray takes seconds longer
    best_id = Path(judged[0].path).name if judged else None
    tests = {best_id: judged[1]} if judged and judged[1] is not None else {}
    epochs, trials = build_tables(results, config, tests)
    write_run(run_dir, epochs, trials, config, run_metadata(config, data.fingerprint))
    if config.search.kind == "grid":
        print(f"\n{grid_table(trials)}")
    else:
        best_value = judged[0].metrics.get(config.metric) if judged else None
        print(
            f"\n{search_summary(trials, best_id, best_value, config.trial.epochs, config.metric)}"
        )
    print(f"\nresults: {run_dir}/ (epochs.parquet, trials.parquet)")
    return 1 if "error" in trials.column("status").to_pylist() else 0
