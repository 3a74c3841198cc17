"""Search efficiency: the default search against what a user would run instead, at one equal
wall-clock budget, on the same data, space and first point, over several search seeds.

    python benchmarks/search_efficiency.py --data-dir /tmp/cifar10 --budget-s 300 --seeds 3
    python benchmarks/search_efficiency.py ... --space wide --out /tmp/search-efficiency-wide

`--space shipped` searches configs/optuna.yaml's own space; `--space wide` searches
benchmarks/wide_space.yaml instead (eight dimensions with wide ranges, as a user would write
them), every other setting as shipped.

A reduced budget: 5 minutes of search per run on 15,000 of the 45,000 training images (the
validation and test sets whole), so that a 20-epoch trial takes about a minute, not three.

Methods (each run a fresh process; its clock starts when the process does, so Ray's start and
the data load count alike):
- default: `tuning/run_optuna.py` as shipped (configs/optuna.yaml: a Gaussian process proposes,
  every trial trained its full budget);
- random: random search, every trial trained its full budget (scheduler fifo);
- tpe: Optuna's TPE as it was by default up to Optuna 4 (one density per dimension, no constant
  liar; Optuna 5's defaults are the default search's own), every trial trained its full budget;
- tune-defaults: what Ray Tune's docs show: `OptunaSearch()` and `ASHAScheduler()` with their
  defaults, `max_concurrent_trials` the CPUs, on our trainable.

For each run it reads every trial's `result.json`, and takes a trial trained to the full budget
as a point (its end, its validation accuracy). It prints and writes (JSON, a figure) the best
such validation accuracy so far against wall time, mean and spread over seeds, and each
method's test accuracy: that of the configuration it would choose (best validation accuracy at
the full budget), evaluated once at the end of that trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)

CONFIG = ROOT / "configs" / "optuna.yaml"
SPACES = {"shipped": None, "wide": Path(__file__).with_name("wide_space.yaml")}
METHODS = {
    "default": [],
    "random": ["search.kind=random", "scheduler.kind=fifo"],
    "tpe": [
        "scheduler.kind=fifo",
        "search.sampler=tpe",
        "search.tpe.multivariate=false",
        "search.tpe.constant_liar=false",
    ],
    "tune-defaults": None,  # not our pipeline: `tune_defaults` below, in a process of its own
}


TRAIN_IMAGES = 15000


def common_overrides(budget_s: float, seed: int, space: str) -> list[str]:
    # No finalists: every method is judged by the one trial it would choose, its test accuracy
    # evaluated once. The validation split stays the full 5,000 images.
    overrides = [
        f"search.time_budget_s={budget_s}",
        f"search.seed={seed}",
        # The budget, not the number of samples, ends every run: on the reduced data halving's
        # 2-epoch trials can draw the config's 200 before it.
        "search.num_samples=2000",
        "final.top_k=0",
        f"data.train_subset={TRAIN_IMAGES + 5000}",
    ]
    if SPACES[space]:  # JSON is YAML's flow style: one --set item carries the whole space
        overrides.append(f"search.space={json.dumps(yaml.safe_load(SPACES[space].read_text()))}")
    return overrides


def run_method(
    method: str,
    sets: list[str] | None,
    data_dir: str,
    out: Path,
    budget_s: float,
    seed: int,
    epochs: int,
    space: str,
) -> dict:
    """Run one method (`sets`: its --set items; None: Tune's defaults) once; its trials'
    (seconds from start, val acc, test acc) at full budget."""
    run_dir = out / f"{method}-seed{seed}"
    overrides = common_overrides(budget_s, seed, space)
    if sets is None:
        command = [sys.executable, __file__, "--tune-defaults", str(run_dir), "--data-dir",
                   data_dir, *[arg for o in overrides for arg in ("--set", o)]]  # fmt: skip
    else:
        command = [
            sys.executable, str(ROOT / "tuning" / "run_optuna.py"), "--data-dir", data_dir,
            "--results-dir", str(out), "--name", run_dir.name, "--no-dashboard", "--no-report",
            *[arg for o in [*overrides, *sets] for arg in ("--set", o)],
        ]  # fmt: skip
    start = time.time()
    log = out / f"{run_dir.name}.log"
    with log.open("w") as file:
        subprocess.run(command, cwd=ROOT, stdout=file, stderr=subprocess.STDOUT, check=True)
    wall = time.time() - start
    points = full_budget_points(run_dir, start, epochs)
    return {"method": method, "seed": seed, "wall_s": wall, "points": points,
            "test_acc": chosen_test(run_dir, points)}  # fmt: skip


def full_budget_points(run_dir: Path, start: float, epochs: int) -> list[dict]:
    """Each trial that trained the full budget of `epochs`: when it ended (seconds from
    `start`), its val acc, and its test acc where the trial reported one."""
    points = []
    for result_file in run_dir.glob("ray/*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line]
        if not lines or lines[-1].get("training_iteration") != epochs:
            continue  # stopped early, or a rung below the full budget
        last = lines[-1]
        points.append(
            {"t": last["timestamp"] - start, "val_acc": last["val_acc"],
             "test_acc": last.get("test_acc")}
        )  # fmt: skip
    return sorted(points, key=lambda p: p["t"])


def chosen_test(run_dir: Path, points: list[dict]) -> float | None:
    """The test accuracy of the configuration the run chose: our pipeline evaluates it once
    (trials.parquet); Tune's way reports it at each trial's end (the best full-budget one's)."""
    trials = run_dir / "trials.parquet"
    if trials.exists():
        import pyarrow.parquet as pq

        judged = [t for t in pq.read_table(trials).column("test_acc").to_pylist() if t is not None]
        return judged[0] if judged else None
    return max(points, key=lambda p: p["val_acc"])["test_acc"] if points else None


def tune_defaults(run_dir: Path, data_dir: str, overrides: list[str]) -> None:
    """OptunaSearch + ASHAScheduler as the docs show them, on our data, trainable and space."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from trainable.data import load_dataset
    from tuning.config import load_config
    from tuning.config.keys import nested
    from tuning.config.space import trial_value
    from tuning.run.tuner import make_trainable, share_data

    config = load_config(CONFIG, [f"data.dir={data_dir}", *overrides])
    search = config.search
    data = load_dataset(config.data)
    ray.init(include_dashboard=False, log_to_driver=False)
    space = {
        **config.trial.model_dump(),
        **nested({k: _to_tune(d) for k, d in search.space.items()}),
    }
    first = nested(
        {key: dist.nearest(trial_value(config, key)) for key, dist in search.space.items()}
    )
    trainable = make_trainable(config, share_data(data), evaluate_test=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=config.metric,
            mode=config.mode,
            search_alg=OptunaSearch(points_to_evaluate=[first], seed=search.seed),
            scheduler=ASHAScheduler(),
            num_samples=search.num_samples,
            max_concurrent_trials=int(ray.cluster_resources()["CPU"]),
            time_budget_s=search.time_budget_s,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(storage_path=str(run_dir), name="ray", verbose=0),
    )
    tuner.fit()
    ray.shutdown()


def _to_tune(dist):
    from tuning.config.space import to_tune

    return to_tune(dist)


def curve(points: list[dict], times: list[float]) -> list[float | None]:
    """Best val acc of a full-budget trial ended by each of `times` (None: none yet)."""
    best, out, i = None, [], 0
    for t in times:
        while i < len(points) and points[i]["t"] <= t:
            best = max(best or 0.0, points[i]["val_acc"])
            i += 1
        out.append(best)
    return out


def summarise(runs: list[dict]) -> dict:
    """Each method's curve (mean, spread over seeds) up to the longest run's wall time, so that
    each run's last value is the one it ends on (a run's clock includes Ray's start and the
    data load, which the search's budget does not)."""
    end = max(r["wall_s"] for r in runs)
    times = [end * i / 40 for i in range(1, 41)]
    summary = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        curves = [curve(r["points"], times) for r in mine]
        final = [c[-1] for c in curves if c[-1] is not None]
        tests = [r["test_acc"] for r in mine if r["test_acc"] is not None]
        summary[method] = {
            "times": times,
            "curves": curves,
            "final_val_mean": statistics.mean(final) if final else None,
            "final_val_sd": statistics.stdev(final) if len(final) > 1 else 0.0,
            "test_mean": statistics.mean(tests) if tests else None,
            "test_sd": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            "full_budget_trials": statistics.mean(len(r["points"]) for r in mine),
            "runs": len(mine),
        }
    return summary


def table(summary: dict) -> str:
    lines = [
        "| method | best val acc at the budget (mean ± sd) | its test acc (mean ± sd) | "
        "trials at full budget | runs |",
        "|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        val = (
            "—"
            if s["final_val_mean"] is None
            else f"{s['final_val_mean']:.4f} ± {s['final_val_sd']:.4f}"
        )
        test = "—" if s["test_mean"] is None else f"{s['test_mean']:.4f} ± {s['test_sd']:.4f}"
        lines.append(f"| {method} | {val} | {test} | {s['full_budget_trials']:.1f} | {s['runs']} |")
    return "\n".join(lines)


def curve_table(runs: list[dict], step_s: float = 50) -> str:
    """The figure as a Markdown table: each method's best full-budget val acc by every `step_s`
    seconds, mean (min–max) over seeds; "—" until every seed has one, as the figure starts."""
    methods = list(dict.fromkeys(r["method"] for r in runs))
    lines = ["| s | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    end = max(r["wall_s"] for r in runs)
    times = [step_s * k for k in range(1, int(end // step_s) + 1)] + [end]
    for t in times:
        cells = []
        for method in methods:
            values = [curve(r["points"], [t])[0] for r in runs if r["method"] == method]
            cells.append(
                "—"
                if None in values
                else f"{statistics.mean(values):.4f} ({min(values):.4f}–{max(values):.4f})"
            )
        lines.append(f"| {t:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for method, s in summary.items():
        xs, mean, low, high = [], [], [], []
        for i, t in enumerate(s["times"]):
            values = [c[i] for c in s["curves"] if c[i] is not None]
            if len(values) == len(s["curves"]):  # every seed has a full-budget trial by then
                xs.append(t)
                mean.append(statistics.mean(values))
                low.append(min(values))
                high.append(max(values))
        ax.plot(xs, mean, label=method)
        ax.fill_between(xs, low, high, alpha=0.2)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("best val acc, full budget")
    ax.set_title("best so far: mean over seeds, band = min to max")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--space", default="shipped", choices=list(SPACES))
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="also run the default search with these --set items, as method NAME (a lever)",
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/search-efficiency"))
    parser.add_argument("--tune-defaults", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = {name: METHODS[name] for name in args.methods}
    for variant in args.variant:
        name, _, items = variant.partition(":")
        methods[name] = [*METHODS["default"], *items.split(",")]
    if args.tune_defaults:
        tune_defaults(args.tune_defaults, args.data_dir, args.set)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "runs.json"
    runs = json.loads(results_file.read_text()) if results_file.exists() else []
    from tuning.config import load_config

    epochs = load_config(CONFIG).trial.epochs
    done = {(r["method"], r["seed"]) for r in runs}
    # Seeds outermost: a drift in the VM's speed falls on every method alike.
    for seed in range(args.seeds):
        for method, sets in methods.items():
            if (method, seed) in done:
                continue
            runs.append(
                run_method(
                    method, sets, args.data_dir, args.out, args.budget_s, seed, epochs, args.space
                )
            )
            results_file.write_text(json.dumps(runs, indent=1))
            print(f"{method} seed {seed}: {runs[-1]['wall_s']:.0f} s, "
                  f"{len(runs[-1]['points'])} trials at full budget", flush=True)  # fmt: skip
    summary = summarise(runs)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(table(summary))
    curves = curve_table(runs)
    (args.out / "curves.md").write_text(curves + "\n")
    print(curves)
    figure(summary, args.out / "search_efficiency.png")
    print(f"figure: {args.out / 'search_efficiency.png'}")


if __name__ == "__main__":
    main()
