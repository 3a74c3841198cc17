"""Tune's output read back: each trial's per-epoch reports from its logs, its restarts, and
the run's tables built from a ResultGrid. The one part of the results room that reads Ray's
objects."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.fs
from ray import tune

from tuning.config import ExperimentConfig
from tuning.config.keys import EPOCH, flat_settings, settings_key
from tuning.results.outcome import Outcome, epoch_budget, trial_outcome
from tuning.results.tables import EPOCH_FIELDS, FINAL_FIELDS, LAST_EPOCH, TRIAL_FIELDS, make_table

logger = logging.getLogger(__name__)


def flatten(report: dict, prefix: str = "") -> dict:
    """A report's nested keys joined with "/", as Tune's CSV logger writes its columns."""
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_text(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """A file's text on any pyarrow filesystem (local, s3, gs, ...); None when it is missing."""
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def trial_epochs(trial_dir: Path | str, fs: pyarrow.fs.FileSystem | None = None) -> list[dict]:
    """One dict per epoch, the last report of an epoch winning, from both of Tune's logs.

    After a restore from a checkpoint, `result.json` can miss a row that `progress.csv` holds
    (ray issue 41668), so the two are merged rather than one trusted. Lines a killed driver or
    a full disk left half-written are skipped with a warning.
    """
    fs = fs or pyarrow.fs.LocalFileSystem()
    folder = Path(trial_dir).as_posix()
    reports = _result_json(read_text(fs, f"{folder}/result.json") or "", f"{folder}/result.json")
    # Each session of Tune's CSV logger writes its rows under the keys of its first report,
    # with no header after a restore: a report's own keys say what those rows hold.
    layouts = [list(flatten({k: v for k, v in r.items() if k != "config"})) for r in reports]
    progress = read_text(fs, f"{folder}/progress.csv") or ""
    by_epoch = {row[EPOCH]: row for row in _progress_csv(progress, layouts)}
    for row in reports:
        if isinstance(row.get(EPOCH), int):
            by_epoch[row[EPOCH]] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _result_json(text: str, where: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            logger.warning("skipped unreadable line %d of %s", number, where)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _progress_csv(text: str, layouts: list[list[str]] = ()) -> list[dict]:
    """Tune's progress.csv rows as dicts: under its header, or, for a row of another length
    (written after a restore under another report's keys), under a report's keys of that
    length. A last line without its newline was cut off while written: skipped."""
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    lines = list(csv.reader(io.StringIO(text, newline="")))
    if not lines:
        return []
    header, *cells = lines
    by_length = {len(header): header}
    for keys in layouts:
        by_length.setdefault(len(keys), keys)
    rows = []
    for values in cells:
        keys = by_length.get(len(values))
        if keys is None:
            continue  # no known layout: result.json or a missing-epoch warning covers it
        parsed = ((k, _parse(t)) for k, t in zip(keys, values, strict=True))
        row = {k: v for k, v in parsed if v is not None}
        # Tune's CSV holds no config columns; the trial's own config stands in for them.
        if isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


def _parse(text: str | None) -> object:
    """A CSV cell back to the int, float, bool or string Tune wrote."""
    if not isinstance(text, str) or text == "":
        return None
    if "_" in text:  # int() would read "123_45", a trial id, as a number
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def missing_epochs(epochs: list[dict]) -> list[int]:
    """Epochs absent from 1..last: a gap both logs share, which the tables cannot fill."""
    seen = {row["epoch"] for row in epochs}
    return [e for e in range(1, max(seen, default=0) + 1) if e not in seen]


def trial_restarts(tune_dir: Path | str, fs: pyarrow.fs.FileSystem | None = None) -> dict[str, int]:
    """Trial id → times Tune restarted it after a failure, from Tune's plain-JSON state."""
    fs = fs or pyarrow.fs.LocalFileSystem()
    listing = fs.get_file_info(pyarrow.fs.FileSelector(Path(tune_dir).as_posix()))
    names = [i.base_name for i in listing if i.base_name.startswith("experiment_state-")]
    states = sorted(name for name in names if name.endswith(".json"))
    if not states:
        return {}
    restarts = {}
    state = read_text(fs, f"{Path(tune_dir).as_posix()}/{states[-1]}")
    for trial_json, runtime_json in json.loads(state)["trial_data"]:
        runtime = json.loads(runtime_json) if isinstance(runtime_json, str) else runtime_json
        restarts[json.loads(trial_json)["trial_id"]] = int(runtime.get("num_failures", 0))
    return restarts


def result_outcome(
    result: tune.Result, epochs: list[dict], budget: int, *, interrupted: bool = False
) -> Outcome:
    """How the trial behind a Tune result ended (`interrupted`: the run stopped first)."""
    return trial_outcome(
        error=result.error is not None,
        diverged=bool(epochs and epochs[-1].get("diverged")),
        epochs=len(epochs),
        budget=budget,
        interrupted=interrupted,
    )


def build_tables(
    results: tune.ResultGrid,
    config: ExperimentConfig,
    *,
    judged: dict[str, float] | None = None,
    interrupted: set[str] | frozenset[str] = frozenset(),
    trial_configs: dict[str, dict] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """The epoch and trial tables, every hyperparameter in a column of its own.

    `judged` maps trial ids to the test accuracy the driver measured on their last checkpoint;
    `interrupted` holds the ids of trials an interrupted run left unfinished; `trial_configs`
    gives the configs of trials that never reported (Tune's result holds none), by id.
    """
    judged = judged or {}
    # Through the results' filesystem: with run.storage on s3:// or gs:// nothing is local.
    restarts = trial_restarts(results.experiment_path, results.filesystem)
    epoch_rows, trial_rows = [], []
    params = dict.fromkeys(flat_settings(config.trial.model_dump()))  # ordered: first seen first
    for result in results:
        trial_id = Path(result.path).name
        epochs = trial_epochs(result.path, result.filesystem)
        if gaps := missing_epochs(epochs):
            logger.warning("no record of epochs %s of trial %s", gaps, trial_id)
        trial_config = result.config or (trial_configs or {}).get(trial_id) or {}
        hyper = flat_settings(trial_config)
        params.update(dict.fromkeys(hyper))
        for row in epochs:
            # Each report carries the config it ran with: PBT changes lr between epochs.
            at_epoch = flat_settings(row.get("config", trial_config))
            metrics = {k: row.get(k) for k in list(EPOCH_FIELDS)[1:]}
            epoch_rows.append({"trial_id": trial_id, **metrics, **at_epoch})
        val_accs = [row["val_acc"] for row in epochs if row.get("val_acc") is not None]
        last = epochs[-1] if epochs else {}
        trial_rows.append(
            {
                "trial_id": trial_id,
                "status": result_outcome(
                    result,
                    epochs,
                    epoch_budget(trial_config, config.trial.epochs),
                    interrupted=trial_id in interrupted,
                ).value,
                **hyper,
                "epochs_completed": len(epochs),
                "best_val_acc": max(val_accs, default=None),
                "final_val_acc": val_accs[-1] if val_accs else None,
                "test_acc": judged.get(trial_id, epochs[-1].get("test_acc") if epochs else None),
                "train_time_s": sum(row.get("epoch_time_s", 0.0) for row in epochs),
                "restarts": restarts.get(trial_id, 0),
                # Where it ran: Tune adds the host to every result, the trainable the rest.
                **{key: last.get(key) for key in ("node_id", "hostname", "device")},
            }
        )
    params = list(params)
    return make_table(epoch_rows, EPOCH_FIELDS, params), make_table(
        trial_rows, TRIAL_FIELDS, params
    )


def final_table(results: tune.ResultGrid, finalists: list, config: ExperimentConfig) -> pa.Table:
    """`final.parquet`: one row per (finalist, seed) of the finalists' re-runs, finalists in the
    search's order. `finalists`: each with `rank`, `trial_id`, `config` and `value`."""
    by_key = {settings_key(f.config): f for f in finalists}
    rows, params = [], dict.fromkeys(flat_settings(config.trial.model_dump()))
    for result in results:
        finalist = by_key.get(settings_key(result.config))
        if finalist is None:  # not one of today's finalists: cannot happen unless edited
            continue
        epochs = trial_epochs(result.path, result.filesystem)
        budget = epoch_budget(result.config, config.trial.epochs)
        # No scheduler stops a re-run: one that ended short was interrupted.
        outcome = result_outcome(result, epochs, budget, interrupted=True)
        last = epochs[-1] if epochs else {}
        hyper = flat_settings(result.config)
        params.update(dict.fromkeys(hyper))
        rows.append(
            {
                "finalist": finalist.rank,
                "search_trial_id": finalist.trial_id,
                "trial_id": Path(result.path).name,
                "status": outcome.value,
                "epochs_completed": len(epochs),
                **{k: last.get(k) for k in LAST_EPOCH},
                "search_value": finalist.value,
                **hyper,
            }
        )
    rows.sort(key=lambda row: (row["finalist"], row["seed"]))
    return make_table(rows, FINAL_FIELDS, list(params))
