"""Compared groups: a grid point over its seeds, or a finalist over its re-runs → `groups.parquet`
and the verdict in words."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from tuning.config import ExperimentConfig
from tuning.results.outcome import Outcome
from tuning.results.stats import MEASURES, group_rows, interval_text, verdict
from tuning.results.tables import FINAL_FIELDS, LAST_EPOCH, TRIAL_FIELDS, write_tables

GRID_REPEAT = "For a verdict, give each point several seeds: --set 'search.grid.seed=[0, 1, 2]'."
FINAL_REPEAT = "For a verdict, re-run each finalist over several seeds: --set final.seeds=3."


def differing_keys(settings: list[dict]) -> list[str]:
    """The settings whose values differ between the groups, in column order."""
    keys = dict.fromkeys(k for s in settings for k in s)
    return [k for k in keys if len({json.dumps(s.get(k), default=str) for s in settings}) > 1]


def label(settings: dict, keys: list[str]) -> str:
    """What tells a group from the others, e.g. "lr 0.001, hidden 512"."""
    parts = [
        f"{k} {settings[k]:g}" if isinstance(settings[k], float) else f"{k} {settings[k]}"
        for k in keys
        if k in settings
    ]
    return ", ".join(parts)


def _groups(replicates: list[dict], settings_of, name_of, metric: str) -> list[dict]:
    """Replicates (dicts with the measures) grouped by their settings; labels from the
    settings that differ, or `name_of(first replicate)` where several do."""
    by_key: dict[str, list[dict]] = defaultdict(list)
    for rep in replicates:
        by_key[json.dumps(settings_of(rep), sort_keys=True, default=str)].append(rep)
    settings = [settings_of(reps[0]) for reps in by_key.values()]
    keys = differing_keys(settings)
    groups = []
    for reps, setting in zip(by_key.values(), settings, strict=True):
        name = label(setting, keys) if len(keys) <= 3 else name_of(reps[0])
        groups.append(
            {
                "label": name or name_of(reps[0]),
                "settings": setting,
                **{m: [r.get(m) for r in reps] for m in dict.fromkeys([*MEASURES, metric])},
            }
        )
    return groups


def grid_sets(trials: pa.Table, epochs: pa.Table, config: ExperimentConfig) -> list[dict]:
    """A grid's groups: each point without its seed, with its completed trials' values (a
    diverged or failed seed has no test accuracy to pool)."""
    params = [c for c in trials.column_names if c not in TRIAL_FIELDS and c != "seed"]
    last = {}
    for row in epochs.to_pylist():  # the run's metric at each trial's last epoch
        if row["epoch"] >= last.get(row["trial_id"], {}).get("epoch", 0):
            last[row["trial_id"]] = row
    replicates = [
        {
            **t,
            "val_acc": t["final_val_acc"],
            config.metric: last.get(t["trial_id"], {}).get(config.metric),
        }
        for t in trials.to_pylist()
        if t["status"] == Outcome.COMPLETED
    ]
    groups = _groups(
        replicates,
        lambda r: {p: r[p] for p in params},
        lambda r: f"point {r['trial_id']}",
        config.metric,
    )
    return groups


def final_sets(final: pa.Table, config: ExperimentConfig) -> list[dict]:
    """The finalists as groups, each with its completed re-runs' values."""
    skip = (set(FINAL_FIELDS) - {"finalist"}) | set(LAST_EPOCH) | {"seed"}
    params = [c for c in final.column_names if c not in skip]
    replicates = [r for r in final.to_pylist() if r["status"] == Outcome.COMPLETED]
    groups = _groups(
        replicates,
        lambda r: {p: r[p] for p in params},
        lambda r: f"finalist {r['finalist']}",
        config.metric,
    )
    # The finalist's number tells it apart already: label the groups by it alone.
    for group in groups:
        group["label"] = f"finalist {group['settings']['finalist']}"
    return groups


def grid_groups(trials: pa.Table, epochs: pa.Table, config: ExperimentConfig) -> list[dict]:
    """`groups.parquet`'s rows for a grid, best first."""
    return group_rows(grid_sets(trials, epochs, config), config.metric, config.mode)


def final_groups(final: pa.Table, config: ExperimentConfig) -> list[dict]:
    """`groups.parquet`'s rows after finalisation, best first."""
    return group_rows(final_sets(final, config), config.metric, config.mode)


def groups_table(rows: list[dict]) -> pa.Table:
    """The rows as a table: columns in first-seen order, types from the values."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return pa.table({c: [row.get(c) for row in rows] for c in columns}) if rows else pa.table({})


def verdict_lines(rows: list[dict], config: ExperimentConfig, finalists: bool) -> list[str]:
    """The console's and report's words: the best group with its intervals, then the verdict."""
    if not rows:
        return []
    best = rows[0]
    what = "finalist" if finalists else "grid point"
    lines = [
        f"best {what} by mean {config.metric}: {best['group']}, "
        f"test acc {interval_text(best, 'test_acc')}"
    ]
    repeat = FINAL_REPEAT if finalists else GRID_REPEAT
    if sentence := verdict(rows, "test_acc", repeat):
        lines.append(f"verdict: {sentence}")
    return lines


def write_groups(
    run_dir: Path,
    config: ExperimentConfig,
    *,
    epochs: pa.Table,
    trials: pa.Table,
    final: pa.Table | None,
    metadata: dict,
) -> list[dict]:
    """Write `final.parquet` (the finalists' re-runs, after finalisation) and `groups.parquet`
    (a grid's points, or the finalists); return the groups' rows, best first."""
    groups = []
    if final is not None:
        groups = final_groups(final, config)
    elif config.search.kind == "grid":
        groups = grid_groups(trials, epochs, config)
    tables = {"final.parquet": final} if final is not None else {}
    if groups:
        tables["groups.parquet"] = groups_table(groups)
    write_tables(run_dir, tables, metadata)
    return groups
