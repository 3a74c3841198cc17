"""Console tables: the learning-rate grid beside the original experiment's published figures."""

from __future__ import annotations

import statistics

import pyarrow as pa

# The original experiment's test accuracy after 5 epochs (DESIGN.md).
ORIGINAL_TEST_ACC = {0.001: 0.4363, 0.0001: 0.4169, 0.01: 0.1000}


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def grid_table(trials: pa.Table) -> str:
    """Per learning rate: trials, epochs, validation and test accuracy (mean ± std over seeds)."""
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
    return "\n".join(lines) + f"\n\ntrials: {counts}"
