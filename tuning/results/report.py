"""Figures and a `report.md` from a run folder's tables, written beside them
(`python tuning/report.py results/<name>`).

Reads only the run folder's `epochs.parquet`, `trials.parquet` and `config.yaml`, and where a
run wrote them `groups.parquet`, `final.parquet` and (for a warm start) `study.db`.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from trainable.files import atomic_write  # noqa: E402
from tuning.config import ExperimentConfig, load_config  # noqa: E402
from tuning.config.keys import RUN_MARK  # noqa: E402
from tuning.config.logs import quieter  # noqa: E402
from tuning.config.space import to_optuna  # noqa: E402
from tuning.results.groups import final_sets, grid_sets, verdict_lines  # noqa: E402
from tuning.results.outcome import Outcome  # noqa: E402
from tuning.results.stats import interval_text  # noqa: E402
from tuning.results.summary import budget_lines  # noqa: E402

MIN_TRIALS_FOR_IMPORTANCE = 2  # with fewer, Optuna calls every dimension equally important


class ReportError(ValueError):
    """The folder cannot be reported on; the message says why."""


def write_report(run_dir: Path) -> list[Path]:
    """Write every figure and `report.md` into `run_dir`; return the files written."""
    missing = [n for n in ("epochs.parquet", "trials.parquet") if not (run_dir / n).exists()]
    if missing:
        raise ReportError(
            f"{run_dir} holds no {' or '.join(missing)}: point at a run folder written by "
            "run_grid.py or run_optuna.py (results/<name>/)"
        )
    config = load_config(run_dir / "config.yaml")
    epochs = pq.read_table(run_dir / "epochs.parquet").to_pylist()
    trials = pq.read_table(run_dir / "trials.parquet").to_pylist()
    if not epochs:
        # Nothing to draw: interrupted before any epoch, or every trial failed at once.
        statuses = ", ".join(f"{n} {s}" for s, n in Counter(t["status"] for t in trials).items())
        note = f"No trial completed an epoch ({len(trials)} trials: {statuses or 'none started'})"
        text = report_markdown(run_dir.name, trials, config, [], [note + "; nothing to plot."])
        atomic_write(run_dir / "report.md", lambda path: path.write_text(text))
        return [run_dir / "report.md"]
    figures = {
        "learning_curves.png": learning_curves(epochs, config),
        "accuracy_vs_lr.png": accuracy_vs_lr(trials),
    }
    notes, importances = [], {}
    if all(t["status"] == Outcome.ERROR for t in trials):
        notes.append(f"Every trial failed (status error): see {run_dir.name}/ray/*/error.txt.")
    if config.search.kind != "grid":
        try:
            study = rebuild_study(trials, config)
            figures.update(optuna_figures(study))
            if len(study.trials) >= MIN_TRIALS_FOR_IMPORTANCE:
                importances = param_importances(study)
            else:
                notes.append(
                    f"Parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} trials "
                    f"with a result; this run has {len(study.trials)}."
                )
        except (ValueError, RuntimeError) as err:  # e.g. too few finished trials to compare
            notes.append(f"Optuna's figures were skipped: {err}")
    compared = compared_groups(run_dir, epochs, trials, config)
    if compared:
        figures["groups.png"] = groups_figure(*compared[:2], config)
    written = []
    for name, figure in figures.items():
        atomic_write(run_dir / name, lambda path, f=figure: f.savefig(path, dpi=110, format="png"))
        plt.close(figure)
        written.append(run_dir / name)
    text = report_markdown(run_dir.name, trials, config, list(figures), notes, importances)
    extra = groups_markdown(*compared, config) if compared else []
    extra += warm_start_markdown(run_dir, config)
    if extra:  # before the figures: the verdict is what a reader came for
        head, sep, tail = text.partition("\n## ")
        extra_text = "\n".join(extra)
        text = f"{head.rstrip()}\n\n{extra_text}{sep}{tail}" if sep else f"{text}\n{extra_text}\n"
    atomic_write(run_dir / "report.md", lambda path: path.write_text(text))
    return [*written, run_dir / "report.md"]


def compared_groups(run_dir: Path, epochs: list[dict], trials: list[dict], config):
    """(groups' rows best first, each group's values by label, the finalists' re-runs or None)
    from `groups.parquet`; None when the run wrote none."""
    import pyarrow as pa

    if not (run_dir / "groups.parquet").exists():
        return None
    rows = pq.read_table(run_dir / "groups.parquet").to_pylist()
    final = None
    if (run_dir / "final.parquet").exists():
        final = pq.read_table(run_dir / "final.parquet").to_pylist()
        sets = final_sets(pa.Table.from_pylist(final), config)
    else:
        sets = grid_sets(pa.Table.from_pylist(trials), pa.Table.from_pylist(epochs), config)
    return rows, {group["label"]: group for group in sets}, final


def groups_figure(rows: list[dict], values: dict[str, dict], config: ExperimentConfig):
    """Each group's seeds as points, with its mean and 95% confidence interval, best first."""
    measures = [m for m in ("val_acc", "test_acc") if any(r[f"{m}_mean"] is not None for r in rows)]
    with plt.style.context("default"):  # Optuna's plots, drawn before, switch to ggplot's
        return _groups_axes(rows, values, config, measures)


def _groups_axes(rows: list[dict], values: dict[str, dict], config, measures: list[str]):
    fig, axes = plt.subplots(
        1, len(measures), figsize=(max(5.5, 1.2 * len(rows) + 2) * len(measures) / 1.6, 4.2),
        constrained_layout=True, squeeze=False,
    )  # fmt: skip
    for ax, measure in zip(axes[0], measures, strict=True):
        for x, row in enumerate(rows):
            points = [v for v in values.get(row["group"], {}).get(measure, []) if v is not None]
            jitter = [x + 0.08 * (i - (len(points) - 1) / 2) for i in range(len(points))]
            ax.scatter(jitter, points, alpha=0.6, color="tab:blue", zorder=3,
                       label="seeds" if x == 0 else None)  # fmt: skip
            mean, low, high = (row[f"{measure}_{k}"] for k in ("mean", "ci_low", "ci_high"))
            if mean is None:
                continue
            err = [[mean - low], [high - mean]] if low is not None else None
            ax.errorbar([x + 0.3], [mean], yerr=err, fmt="o", color="black", capsize=5,
                        zorder=4, label="mean, 95% CI" if x == 0 else None)  # fmt: skip
        ax.set_xticks(range(len(rows)), [r["group"] for r in rows], rotation=20, ha="right")
        ax.set(ylabel=measure.replace("_", " "), title=f"{measure.replace('_', ' ')} by group")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"{config.name}: groups best first (by mean {config.metric})")
    return fig


def groups_markdown(rows, values, final, config: ExperimentConfig) -> list[str]:
    """The compared groups with their intervals, the verdict, and for finalists their order."""
    finalists = final is not None
    lines = [
        "## Finalists over their re-runs" if finalists else "## Compared groups",
        "",
        "Each group's mean, ± the half width of its 95% confidence interval (t distribution), "
        "over its seeds; p: Welch's t-test against the best group (rank 1, by mean "
        f"{config.metric}). Details in `groups.parquet`"
        + (" and every re-run in `final.parquet`." if finalists else "."),
        "",
        "| rank | group | n | val acc | test acc | p vs best (test) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        p = row.get("test_acc_p_vs_best")
        lines.append(
            f"| {row['rank']} | {row['group']} | {row['n']} | {interval_text(row, 'val_acc')} | "
            f"{interval_text(row, 'test_acc')} | {'—' if p is None else f'{p:.3g}'} |"
        )
    lines += ["", *[f"- **{line}**" for line in verdict_lines(rows, config, finalists)], ""]
    if finalists:
        order = [row["finalist"] for row in rows]
        searched = ", ".join(dict.fromkeys(str(r["search_trial_id"]) for r in final))
        same = "the same as" if order == sorted(order) else "not"
        lines += [
            f"Order over seeds: finalists {', '.join(map(str, order))}; {same} the search's "
            f"single-seed order (1 = its best trial). Each finalist re-trains a search trial "
            f"({searched}) with fresh seeds for the full "
            "budget; these re-runs are not in trials.parquet.",
            "",
        ]
    return lines


def warm_start_markdown(run_dir: Path, config: ExperimentConfig) -> list[str]:
    """Where the study's earlier trials came from: they are in study.db, not trials.parquet."""
    study_file = run_dir / "study.db"
    if not config.search.warm_start or not study_file.exists():
        return []
    import optuna

    with quieter("optuna"):
        study = optuna.load_study(
            study_name=run_dir.name, storage=f"sqlite:///{study_file.resolve()}"
        )
    counts: dict[str, int] = defaultdict(int)
    for trial in study.trials:
        if RUN_MARK in trial.user_attrs:
            counts[trial.user_attrs[RUN_MARK]] += 1
    lines = [
        "## Warm start",
        "",
        "The study began with earlier runs' finished trials (in `study.db`, marked with the "
        "user attribute `warm_start_run`; not in this run's tables):",
        "",
    ]
    for folder in config.search.warm_start:
        lines.append(
            f"- {folder}: {counts.get(str(Path(folder).expanduser().resolve()), 0)} trials"
        )
    return [*lines, ""]


def learning_curves(epochs: list[dict], config: ExperimentConfig) -> plt.Figure:
    """Accuracy and loss by epoch, one line per trial, coloured by learning rate."""
    split = "val" if any(row["val_acc"] is not None for row in epochs) else "train"
    by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in epochs:
        by_trial[row["trial_id"]].append(row)
    lrs = [row["lr"] for row in epochs]
    norm = matplotlib.colors.LogNorm(min(lrs), max(lrs) * (1.0001 if min(lrs) == max(lrs) else 1))
    colours = matplotlib.colormaps["viridis"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for rows in by_trial.values():
        rows.sort(key=lambda r: r["epoch"])
        x = [r["epoch"] for r in rows]
        for ax, metric in zip(axes, ("acc", "loss"), strict=True):
            y = [r[f"{split}_{metric}"] for r in rows]
            # A lone point (a trial stopped after one epoch) needs a marker to be seen.
            ax.plot(x, y, color=colours(norm(rows[0]["lr"])), alpha=0.8, marker=".", lw=1.2)
    for ax, metric in zip(axes, ("accuracy", "loss"), strict=True):
        ax.set(xlabel="epoch", ylabel=f"{split} {metric}", title=f"{split} {metric} by epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm, colours), ax=axes, label="learning rate")
    fig.suptitle(f"{config.name}: one line per trial (shorter lines were stopped early)")
    return fig


def accuracy_vs_lr(trials: list[dict]) -> plt.Figure:
    """Final accuracy against learning rate: each trial a point, mean ± std per rate."""
    completed = [t for t in trials if t["status"] == Outcome.COMPLETED]
    on_test = bool(completed) and all(t["test_acc"] is not None for t in completed)
    key = "test_acc" if on_test else "final_val_acc"
    points = [(t["lr"], t[key]) for t in trials if t[key] is not None and math.isfinite(t[key])]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), constrained_layout=True)
    if points:
        ax.scatter(*zip(*points, strict=True), alpha=0.6, label="trials (seeds)", zorder=3)
    grouped: dict[float, list[float]] = defaultdict(list)
    for lr, acc in points:
        grouped[lr].append(acc)
    repeated = {lr: accs for lr, accs in sorted(grouped.items()) if len(accs) > 1}
    if repeated:
        means = [statistics.mean(a) for a in repeated.values()]
        stds = [statistics.stdev(a) for a in repeated.values()]
        ax.errorbar(
            list(repeated),
            means,
            yerr=stds,
            fmt="o-",
            color="black",
            capsize=4,
            label="mean ± std",
            zorder=4,
        )
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel=key.replace("_", " "), title=f"{key} by learning rate")
    ax.grid(alpha=0.3, which="both")
    if points:
        ax.legend()
    return fig


def rebuild_study(trials: list[dict], config: ExperimentConfig):
    """An in-memory Optuna study holding every trial of the table that has the metric."""
    import optuna

    with quieter("optuna"):  # no line for a study made in memory
        study = optuna.create_study(direction="maximize" if config.mode == "max" else "minimize")
    distributions = {key: to_optuna(dist) for key, dist in config.search.space.items()}
    metric = {"val_acc": "final_val_acc"}.get(config.metric)
    for trial in trials:
        value = trial.get(metric) if metric else None
        if value is None or not math.isfinite(value):
            continue
        params = {key: trial[key] for key in distributions}
        study.add_trial(
            optuna.trial.create_trial(params=params, distributions=distributions, value=value)
        )
    return study


def param_importances(study) -> dict[str, float]:
    """Each searched dimension's importance, largest first, summing to 1.

    Optuna's default evaluator, as in `param_importances.png`: PED-ANOVA in Optuna 5, which
    needs no scikit-learn.
    """
    import optuna

    return dict(optuna.importance.get_param_importances(study))


def optuna_figures(study) -> dict[str, plt.Figure]:
    """Optuna's history and importance plots of the rebuilt study."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    plots = {"optimization_history.png": optuna_plots.plot_optimization_history}
    if len(study.trials) >= MIN_TRIALS_FOR_IMPORTANCE:
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    figures = {}
    for name, plot in plots.items():
        with warnings.catch_warnings():  # Optuna's matplotlib plots are "experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ax = plot(study)
        ax.figure.set_size_inches(7, 4.2)
        ax.figure.tight_layout()
        figures[name] = ax.figure
    return figures


def report_markdown(
    name: str,
    trials: list[dict],
    config: ExperimentConfig,
    figures: list[str],
    notes: list[str],
    importances: dict[str, float] | None = None,
) -> str:
    columns = [
        "trial_id",
        "status",
        *config.search.keys,
        "epochs_completed",
        "final_val_acc",
        "test_acc",
    ]
    ranked = sorted(trials, key=lambda t: -(t["final_val_acc"] or 0))

    def cell(value) -> str:
        if value is None:
            return "—"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = [
        f"# {name}",
        "",
        f"Experiment `{config.name}`: {len(trials)} trials, "
        f"{config.search.kind} search, scheduler {config.scheduler.kind}, "
        f"chosen on {config.metric} ({config.mode}).",
        "",
    ]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(t.get(c)) for c in columns) + " |" for t in ranked]
    lines.append("")
    if config.search.kind != "grid" and trials:
        rungs = config.scheduler.rungs(config.trial.epochs)
        lines += [
            "## How the search spent its budget",
            "",
            *[
                f"- {line}"
                for line in budget_lines(
                    trials, rungs, config.trial.epochs, retrains=config.scheduler.retrains
                )
            ],
            "",
        ]
    if importances:
        lines += [
            "## Which dimensions mattered",
            "",
            f"How much each searched dimension moves the final {config.metric} (Optuna's "
            "importance evaluator over the trials with a result, shares summing to 1; "
            "early-stopped trials count with their last epoch's value).",
            "",
            "| dimension | importance |",
            "|---|---|",
            *[f"| {key} | {value:.3f} |" for key, value in importances.items()],
            "",
        ]
    for figure in figures:
        title = figure.removesuffix(".png").replace("_", " ")
        lines += [f"## {title}", "", f"![{title}]({figure})", ""]
    lines += [f"_{note}_" for note in notes]
    return "\n".join(lines) + "\n"
