"""Warm start: earlier runs' finished trials enter a new Optuna study before it proposes anything.

The search's study (`tuning.search.plan`) opens the same name and storage afterwards, so the
trials added here are in the study TPE samples from; they count towards TPE's start-up trials
(complete and pruned ones), so with enough of them the first proposals are TPE's, not random
ones. Each is marked with the user attributes `warm_start_run` (the folder) and
`warm_start_trial_id`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

import optuna
import pyarrow.parquet as pq

from trainable.schedules import warmup_for
from tuning.config import ConfigError, ExperimentConfig, load_config
from tuning.config.keys import RUN_MARK, TRIAL_MARK, setting_key
from tuning.config.space import optuna_space
from tuning.results.outcome import Outcome
from tuning.search.study import open_study

RUN_FILE = "config.yaml"
TABLES = ("trials.parquet", "epochs.parquet")


def earlier_trials(folder: Path, config: ExperimentConfig) -> tuple[list[dict], int]:
    """A run folder's finished trials, each with its settings (flat columns), `value` (the
    metric at its last epoch) and `intermediate` ({epoch: value}); and how many were left out
    as unfinished. ConfigError for a folder that is not a run or optimised another metric."""
    missing = [name for name in (RUN_FILE, *TABLES) if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"--warm-start {folder} is not a run folder (no {', '.join(missing)}); give a "
            "folder run_grid.py or run_optuna.py wrote, e.g. results/<name>"
        )
    try:
        earlier = load_config(folder / RUN_FILE)
    except ConfigError as err:
        raise ConfigError(f"--warm-start {folder}: its config.yaml does not load: {err}") from None
    if (earlier.metric, earlier.mode) != (config.metric, config.mode):
        raise ConfigError(
            f"--warm-start {folder} optimised {earlier.metric} ({earlier.mode}), this search "
            f"{config.metric} ({config.mode}): their values cannot share a study; warm-start "
            "from a run with the same metric and mode"
        )
    by_trial: dict[str, dict[int, float]] = defaultdict(dict)
    for row in pq.read_table(folder / "epochs.parquet").to_pylist():
        value = row.get(config.metric)
        if value is not None and math.isfinite(value):
            by_trial[row["trial_id"]][row["epoch"]] = value
    trials, unfinished = [], 0
    for trial in pq.read_table(folder / "trials.parquet").to_pylist():
        curve = by_trial.get(trial["trial_id"])
        if not Outcome(trial["status"]).has_value or not curve:
            unfinished += 1
            continue
        last = max(curve)
        if earlier.scheduler.retrains and trial.get("warmup") and trial.get("epochs"):
            # A rung trial trained its warm-up scaled to its budget: the study holds the
            # searched value, for the full budget (rounded: the round trip must not leave a
            # value at the space's bound a hair outside it).
            searched = warmup_for(trial["epochs"], trial["warmup"], earlier.trial.epochs)
            trial["warmup"] = round(searched, 9)
        trials.append({**trial, "value": curve[last], "intermediate": dict(sorted(curve.items()))})
    return trials, unfinished


def seed_study(config: ExperimentConfig, study_path: Path) -> tuple[str, list[dict]]:
    """Add the finished trials of `config.search.warm_start`'s runs to the study Ray will open;
    return the line to print and the parameters added (Optuna's names)."""
    # The names ("model_args/width") and distributions the search will ask with.
    distributions = optuna_space(config)
    folders = [Path(p).expanduser().resolve() for p in config.search.warm_start]
    sources = [(folder, *earlier_trials(folder, config)) for folder in folders]
    added, skipped = [], Counter()
    for folder, trials, unfinished in sources:
        skipped["unfinished"] += unfinished
        for trial in trials:
            params = {name: trial.get(setting_key(name)) for name in distributions}
            if missing := [name for name, value in params.items() if value is None]:
                skipped[f"missing {setting_key(missing[0])}"] += 1
                continue
            try:  # Optuna's own check that every value lies in its distribution
                added.append(
                    optuna.trial.create_trial(
                        params=params,
                        distributions=distributions,
                        value=trial["value"],
                        intermediate_values=trial["intermediate"],
                        user_attrs={RUN_MARK: str(folder), TRIAL_MARK: trial["trial_id"]},
                    )
                )
            except ValueError:
                skipped["outside the space"] += 1
    study = open_study(study_path.parent, metric=config.metric, mode=config.mode)
    study.add_trials(added)
    left = sum(skipped.values())
    reasons = ", ".join(f"{count} {why}" for why, count in sorted(skipped.items()) if count)
    runs = f"{len(folders)} earlier run{'s' if len(folders) != 1 else ''}"
    line = (
        f"warm start: {len(added)} finished trials of {runs} added to the study "
        f"({', '.join(map(str, folders))}); {left} left out{f' ({reasons})' if left else ''}"
    )
    # The sampler proposes at random until the study holds its start-up trials (every trial
    # added is COMPLETE, which either sampler counts).
    if 0 < len(study.trials) < (startup := config.search.startup_trials):
        line += f"; the first {startup - len(study.trials)} proposals are still random ones"
    return line, [t.params for t in added]
