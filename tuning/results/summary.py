"""Console tables: the learning-rate grid beside the original experiment's published figures."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pyarrow as pa

from trainable.families import FAMILIES, readers
from tuning.config import ExperimentConfig
from tuning.results.outcome import Outcome
from tuning.results.stats import interval_text
from tuning.results.tables import FINAL_FIELDS, TRIAL_FIELDS

# The original experiment's test accuracy after 5 epochs (DESIGN.md).
ORIGINAL_TEST_ACC = {0.001: 0.4363, 0.0001: 0.4169, 0.01: 0.1000}


def run_header(config: ExperimentConfig, data, read_s: float, at_once: int, gpus: float) -> str:
    """What the run is about to do: its trials, data and resources."""
    search = config.search
    if search.kind == "grid":
        count = math.prod(len(v) for v in search.grid.values())
        trials = f"{count} trials ({' × '.join(search.grid) or 'one point'})"
    else:
        trials = f"up to {search.num_samples} trials searching {', '.join(search.space)}"
        if search.time_budget_s:
            trials += f" for at most {search.time_budget_s / 60:g} minutes"
    resources = config.resources
    gpu = f" and {gpus:g} GPU" if gpus else ""
    return "\n".join(
        [
            f"{config.name} ({search.kind}, {config.scheduler.kind}): {trials}, "
            f"{config.trial.epochs} epochs each, choosing by {config.metric} ({config.mode})",
            f"data: {data.source}, {len(data.train_y)} train / {len(data.val_y)} val / "
            f"{len(data.test_y)} test images of {data.image_shape}, read in {read_s:.1f} s",
            f"resources: {resources.cpus_per_trial:g} CPU{gpu} per trial, "
            f"{at_once} trial{'s' if at_once > 1 else ''} at a time",
        ]
    )


def reads(model: str, setting: str) -> bool:
    """Whether a trial of `model` reads `setting` (a family's own settings only its family)."""
    families = readers(setting)
    return families is None or model in families or (not families and model not in FAMILIES)


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def grid_table(trials: pa.Table, verdict: list[str] = ()) -> str:
    """Per learning rate: trials, epochs, validation and test accuracy (mean ± std over seeds);
    then the `verdict` lines (tuning.groups.verdict_lines)."""
    rows = trials.to_pylist()
    header = "| lr | trials | epochs | val acc | test acc | original test acc |"
    lines = [header, "|---|---|---|---|---|---|"]
    for lr in sorted({row["lr"] for row in rows}, reverse=True):
        group = [row for row in rows if row["lr"] == lr]
        epochs = sorted({row["epochs_completed"] for row in group})
        vals = [row["final_val_acc"] for row in group if row["final_val_acc"] is not None]
        tests = [row["test_acc"] for row in group if row["test_acc"] is not None]
        original = ORIGINAL_TEST_ACC.get(lr)
        lines.append(
            f"| {lr:g} | {len(group)} | {'/'.join(map(str, epochs))} | {mean_std(vals)} "
            f"| {mean_std(tests)} | {'—' if original is None else f'{original:.4f}'} |"
        )
    statuses = sorted({row["status"] for row in rows})
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in statuses)
    return "\n".join([*lines, "", f"trials: {counts}", *verdict])


def search_summary(
    trials: pa.Table,
    best_id: str | None,
    best_value: float | None,
    max_epochs: int,
    metric: str,
    *,
    rungs: list[int] = (),
    retrains: bool = False,
    finalists: bool = False,
) -> str:
    """The chosen configuration, its scores, and where the budget went (`budget_lines`); with
    `finalists`, the test set judges their re-runs instead of the chosen trial's checkpoint."""
    rows = trials.to_pylist()
    lines = []
    best = next((row for row in rows if row["trial_id"] == best_id), None)
    if best is None:
        lines.append("no trial reported the metric: nothing to choose")
    else:
        params = [
            c
            for c in trials.column_names
            if c not in TRIAL_FIELDS and best[c] is not None and reads(best["model"], c)
        ]
        chosen = ", ".join(
            f"{p}={best[p]:.3g}" if isinstance(best[p], float) else f"{p}={best[p]}" for p in params
        )
        if finalists:
            judged = "test acc: judged over the finalists' re-runs below"
        else:
            test = "—" if best["test_acc"] is None else f"{best['test_acc']:.4f}"
            judged = f"test acc {test} (its last checkpoint, evaluated once)"
        lines += [
            f"best trial {best_id} (by {metric}): {chosen}",
            f"  {metric} {best_value:.4f} after {best['epochs_completed']} epochs, {judged}",
        ]
    counts = ", ".join(f"{sum(r['status'] == s for r in rows)} {s}" for s in Outcome)
    lines.append(f"trials: {len(rows)} ({counts})")
    return "\n".join([*lines, *budget_lines(rows, rungs, max_epochs, retrains=retrains)])


def budget_lines(
    rows: list[dict], rungs: list[int], max_epochs: int, *, retrains: bool = False
) -> list[str]:
    """Where a search's epochs and training time went: how many trials reached each of the
    scheduler's `rungs` and their whole budget, and the share of training time spent on trials
    a scheduler later stopped. With `retrains` (halving) each trial trains a rung's budget of
    its own: how many trained each, and the time on those below the full budget."""
    if retrains:
        return _rung_budget_lines(rows, rungs, max_epochs)
    trained = sum(row["epochs_completed"] for row in rows)
    budget = sum(row.get("epochs") or max_epochs for row in rows)
    saved = f" ({1 - trained / budget:.0%} saved)" if budget else ""
    lines = [f"epochs trained: {trained} of {budget} without early stopping{saved}"]
    full = sum(row["epochs_completed"] >= (row.get("epochs") or max_epochs) for row in rows)
    reached = [f"{sum(r['epochs_completed'] >= rung for r in rows)} epoch {rung}" for rung in rungs]
    lines.append(
        f"reached: {', '.join([*reached, f'{full} their whole budget'])} (of {len(rows)} trials)"
    )
    total = sum(row["train_time_s"] or 0.0 for row in rows)
    stopped = sum(
        row["train_time_s"] or 0.0 for row in rows if row["status"] == Outcome.EARLY_STOPPED
    )
    if total:
        lines.append(
            f"training time: {stopped / total:.0%} on trials stopped early "
            f"({stopped:,.0f} of {total:,.0f} s)"
        )
    return lines


def _rung_budget_lines(rows: list[dict], rungs: list[int], max_epochs: int) -> list[str]:
    trained = sum(row["epochs_completed"] for row in rows)
    done = [row for row in rows if row["status"] == Outcome.COMPLETED]
    per_rung = [
        f"{sum(row['epochs'] == budget for row in done)} at "
        f"{'the full ' if budget == max_epochs else ''}{budget}"
        for budget in [*rungs, max_epochs]
    ]
    per_rung[0] += " epochs"
    lines = [
        f"epochs trained: {trained}",
        f"trials per rung: {', '.join(per_rung)} (of {len(rows)} trials)",
    ]
    total = sum(row["train_time_s"] or 0.0 for row in rows)
    below = sum(
        row["train_time_s"] or 0.0
        for row in rows
        if row["status"] != Outcome.COMPLETED or row["epochs"] < max_epochs
    )
    if total:
        lines.append(
            f"training time: {below / total:.0%} on trials below the full budget "
            f"({below:,.0f} of {total:,.0f} s)"
        )
    return lines


def node_counts(trials: pa.Table) -> dict[str, int]:
    """Trials per node, each named by host and the start of its node id (hosts may repeat)."""
    rows = trials.to_pylist()
    counts = Counter(f"{r['hostname']} ({r['node_id'][:8]})" for r in rows if r.get("node_id"))
    return dict(sorted(counts.items()))


def finalist_summary(final: pa.Table, groups: list[dict], verdict: list[str]) -> str:
    """The finalists by mean metric, with intervals over their re-runs, against the search's
    single-seed order; then the winner and the verdict."""
    rows = final.to_pylist()
    lines = [
        "| rank | finalist (search order) | search trial | re-runs | val acc | test acc |",
        "|---|---|---|---|---|---|",
    ]
    for group in groups:
        number = group["finalist"]
        mine = [r for r in rows if r["finalist"] == number]
        done = sum(r["status"] == Outcome.COMPLETED for r in mine)
        lines.append(
            f"| {group['rank']} | {number} | {mine[0]['search_trial_id']} | {done} of "
            f"{len(mine)} | {interval_text(group, 'val_acc')} | "
            f"{interval_text(group, 'test_acc')} |"
        )
    if groups:
        first = next(r for r in rows if r["finalist"] == groups[0]["finalist"])
        params = [
            k
            for k in first
            if k not in FINAL_FIELDS and k != "seed" and reads(first.get("model", "mlp"), k)
        ]
        shown = ", ".join(
            f"{k}={first[k]:.3g}" if isinstance(first[k], float) else f"{k}={first[k]}"
            for k in params
        )
        lines.append(f"winner: finalist {groups[0]['finalist']}: {shown}")
    order = [g["finalist"] for g in groups]
    same = order == sorted(order)
    lines.append(
        f"finalists' order over seeds: {', '.join(map(str, order))} "
        f"({'the same as' if same else 'differs from'} the search's single-seed order)"
    )
    unfinished = sum(r["status"] != Outcome.COMPLETED for r in rows)
    if unfinished:
        lines.append(f"{unfinished} of {len(rows)} re-runs did not complete (see final.parquet)")
    return "\n".join([*lines, *verdict])
