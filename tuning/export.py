"""Run folder output: Tune's trial logs → `epochs.parquet`, `trials.parquet`, `config.yaml`."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from ray import tune

from tuning.config import ExperimentConfig

EPOCH_FIELDS = {
    "trial_id": pa.string(),
    "epoch": pa.int64(),  # 1-based
    "train_loss": pa.float64(),
    "train_acc": pa.float64(),
    "val_loss": pa.float64(),  # null when data.val_size is 0
    "val_acc": pa.float64(),
    "epoch_time_s": pa.float64(),  # the training pass alone, evaluation excluded
}
TRIAL_FIELDS = {
    "trial_id": pa.string(),
    "status": pa.string(),  # completed | early_stopped | diverged | error
    "epochs_completed": pa.int64(),
    "best_val_acc": pa.float64(),
    "final_val_acc": pa.float64(),
    "test_acc": pa.float64(),  # null where the trial was not evaluated on test
    "train_time_s": pa.float64(),  # sum of epoch_time_s
}


def trial_epochs(result: tune.Result) -> list[dict]:
    """One dict per epoch from the trial's `result.json`, the last report of an epoch winning."""
    by_epoch: dict[int, dict] = {}
    log = Path(result.path) / "result.json"
    if log.exists():
        for line in log.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "epoch" in row:
                    by_epoch[row["epoch"]] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def trial_status(result: tune.Result, epochs: list[dict], planned: int) -> str:
    if result.error is not None:
        return "error"
    if epochs and epochs[-1].get("diverged"):
        return "diverged"
    return "completed" if len(epochs) >= planned else "early_stopped"


def build_tables(
    results: tune.ResultGrid, config: ExperimentConfig, judged: dict[str, float] | None = None
) -> tuple[pa.Table, pa.Table]:
    """The epoch and trial tables, every hyperparameter in a column of its own.

    `judged` maps trial ids to the test accuracy the driver measured on their last checkpoint.
    """
    params = list(config.trial.model_dump())
    judged = judged or {}
    epoch_rows, trial_rows = [], []
    for result in results:
        epochs = trial_epochs(result)
        trial_id = Path(result.path).name
        hyper = {key: result.config.get(key) for key in params}
        for row in epochs:
            # Each report carries the config it ran with: PBT changes lr between epochs.
            at_epoch = {key: row.get("config", result.config).get(key) for key in params}
            metrics = {k: row.get(k) for k in list(EPOCH_FIELDS)[1:]}
            epoch_rows.append({"trial_id": trial_id, **metrics, **at_epoch})
        val_accs = [row["val_acc"] for row in epochs if row.get("val_acc") is not None]
        trial_rows.append(
            {
                "trial_id": trial_id,
                "status": trial_status(result, epochs, result.config.get("epochs", 0)),
                **hyper,
                "epochs_completed": len(epochs),
                "best_val_acc": max(val_accs, default=None),
                "final_val_acc": val_accs[-1] if val_accs else None,
                "test_acc": judged.get(trial_id, epochs[-1].get("test_acc") if epochs else None),
                "train_time_s": sum(row.get("epoch_time_s", 0.0) for row in epochs),
            }
        )
    return _table(epoch_rows, EPOCH_FIELDS, params), _table(trial_rows, TRIAL_FIELDS, params)


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
    metadata: dict[str, str],
) -> None:
    """Write the tables and the resolved config, each atomically (temporary name, then rename)."""
    meta = {b"cifar_tune": json.dumps(metadata).encode()}
    for name, table in (("epochs.parquet", epochs), ("trials.parquet", trials)):
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        _atomic(run_dir / name, lambda path, t=table: pq.write_table(t, path))
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    _atomic(run_dir / "config.yaml", lambda path: path.write_text(text))


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)  # atomic on POSIX: readers see the old file or the new one
    finally:
        partial.unlink(missing_ok=True)


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
