"""Run folder output: Tune's trial logs → `epochs.parquet`, `trials.parquet`, `config.yaml`."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import yaml
from ray import tune
from ray.tune.utils import flatten_dict

from trainable.families import MODEL_ARGS
from tuning.config import ExperimentConfig

EPOCH_FIELDS = {
    "trial_id": pa.string(),
    "epoch": pa.int64(),  # 1-based
    "train_loss": pa.float64(),
    "train_acc": pa.float64(),
    "val_loss": pa.float64(),  # null when data.val_size is 0
    "val_acc": pa.float64(),
    "epoch_time_s": pa.float64(),  # the training pass alone, evaluation excluded
    "threads": pa.int64(),  # the trial's CPUs, plus idle ones an MLP trial took up on its node
}
TRIAL_FIELDS = {
    "trial_id": pa.string(),
    "status": pa.string(),  # completed | early_stopped | diverged | interrupted | error
    "epochs_completed": pa.int64(),
    "best_val_acc": pa.float64(),
    "final_val_acc": pa.float64(),
    "test_acc": pa.float64(),  # null where the trial was not evaluated on test
    "train_time_s": pa.float64(),  # sum of epoch_time_s
    "restarts": pa.int64(),  # times the trial was restarted from a checkpoint after a failure
    "node_id": pa.string(),  # the Ray node of the trial's last epoch
    "hostname": pa.string(),
    "device": pa.string(),  # cpu, or cuda:<GPU id on that node>
}


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
    layouts = [list(flatten_dict({k: v for k, v in r.items() if k != "config"})) for r in reports]
    progress = read_text(fs, f"{folder}/progress.csv") or ""
    by_epoch = {row["epoch"]: row for row in _progress_csv(progress, layouts)}
    for row in reports:
        if isinstance(row.get("epoch"), int):
            by_epoch[row["epoch"]] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _result_json(text: str, where: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            print(f"warning: skipped unreadable line {number} of {where}", file=sys.stderr)
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


def trial_status(
    result: tune.Result, epochs: list[dict], planned: int, interrupted: bool = False
) -> str:
    """`interrupted`: the run stopped (Ctrl-C) before this trial ended; else a trial with
    fewer epochs than planned was stopped by the scheduler."""
    if result.error is not None:
        return "error"
    if epochs and epochs[-1].get("diverged"):
        return "diverged"
    if len(epochs) >= planned:
        return "completed"
    return "interrupted" if interrupted else "early_stopped"


def build_tables(
    results: tune.ResultGrid,
    config: ExperimentConfig,
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
            print(f"warning: no record of epochs {gaps} of trial {trial_id}", file=sys.stderr)
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
                "status": trial_status(
                    result,
                    epochs,
                    trial_config.get("epochs", config.trial.epochs),
                    trial_id in interrupted,
                ),
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
    return _table(epoch_rows, EPOCH_FIELDS, params), _table(trial_rows, TRIAL_FIELDS, params)


def flat_settings(trial: dict) -> dict:
    """A trial's settings a column each: its model's `model_args` as `model_args.<name>`."""
    own = trial.get(MODEL_ARGS) or {}
    return {
        **{key: value for key, value in trial.items() if key != MODEL_ARGS},
        **{f"{MODEL_ARGS}.{name}": value for name, value in own.items()},
    }


def _table(rows: list[dict], fixed: dict[str, pa.DataType], params: list[str]) -> pa.Table:
    columns = list(fixed) + [p for p in params if p not in fixed]
    if not rows:
        return pa.table({c: pa.array([], fixed.get(c, pa.null())) for c in columns})
    return pa.table({c: pa.array([row.get(c) for row in rows], fixed.get(c)) for c in columns})


def run_metadata(config: ExperimentConfig, data_fingerprint: str) -> dict[str, str]:
    """Versions, data fingerprint and git commit: what a reader needs to trace a result."""
    import optuna
    import ray
    import torch

    return {
        "experiment": config.name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "pyarrow": pa.__version__,
        "data_fingerprint": data_fingerprint,
        "git_commit": _git_commit() or "",
    }


def write_run(
    run_dir: Path,
    epochs: pa.Table,
    trials: pa.Table,
    config: ExperimentConfig,
    metadata: dict,
) -> None:
    """Write the tables and the resolved config, each atomically (temporary name, then rename)."""
    meta = {b"cifar_tune": json.dumps(metadata).encode()}
    for name, table in (("epochs.parquet", epochs), ("trials.parquet", trials)):
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        atomic_write(run_dir / name, lambda path, t=table: pq.write_table(t, path))
    write_config(run_dir, config)


def write_tables(run_dir: Path, tables: dict[str, pa.Table], metadata: dict) -> None:
    """More tables beside the run's two (`final.parquet`, `groups.parquet`): the same metadata,
    each written atomically."""
    meta = {b"cifar_tune": json.dumps(metadata).encode()}
    for name, table in tables.items():
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        atomic_write(run_dir / name, lambda path, t=table: pq.write_table(t, path))


def write_config(run_dir: Path, config: ExperimentConfig) -> None:
    """The resolved config as YAML, loadable again (`--resume` reads it)."""
    text = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda path: path.write_text(text))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a temporary name beside `path`, flush it to disk, then rename it over
    `path`: after a crash or a power cut, readers find the old file or the whole new one."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        fsync(partial)  # else a rename can reach the disk before the data it names
        os.replace(partial, path)  # atomic on POSIX: readers see the old file or the new one
        fsync(path.parent)  # the rename itself
    finally:
        partial.unlink(missing_ok=True)


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') writes to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None
