"""The run folder's tables: their columns, how rows become a table, and how tables and the
resolved config are written (each whole or not at all, with the run's metadata)."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata as package_metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from trainable.files import atomic_write
from tuning.config import ExperimentConfig

METADATA_KEY = b"cifar_tune"  # the Parquet schema metadata holding `run_metadata`

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
    "status": pa.string(),  # an Outcome: completed | early_stopped | diverged | interrupted | error
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


FINAL_FIELDS = {
    "finalist": pa.int64(),  # 1 = the search's best configuration, in the search's order
    "search_trial_id": pa.string(),  # the search trial the configuration comes from
    "trial_id": pa.string(),  # this re-run's Tune trial
    "status": pa.string(),  # an Outcome: completed | diverged | interrupted | error
    "epochs_completed": pa.int64(),
    "train_loss": pa.float64(),  # at the last epoch, as every metric here
    "train_acc": pa.float64(),
    "val_acc": pa.float64(),
    "val_loss": pa.float64(),
    "test_acc": pa.float64(),  # the re-run's last model, evaluated once
    "test_loss": pa.float64(),
    "search_value": pa.float64(),  # the run's metric of the search trial, at its last epoch
}
LAST_EPOCH = ("train_loss", "train_acc", "val_acc", "val_loss", "test_acc", "test_loss")


def make_table(rows: list[dict], fixed: dict[str, pa.DataType], params: list[str]) -> pa.Table:
    """`rows` as a table: the `fixed` columns with their types first, then every setting in
    `params`; typed and empty where there are no rows."""
    columns = list(fixed) + [p for p in params if p not in fixed]
    if not rows:
        return pa.table({c: pa.array([], fixed.get(c, pa.null())) for c in columns})
    return pa.table({c: pa.array([row.get(c) for row in rows], fixed.get(c)) for c in columns})


def write_parquet(path: Path, table: pa.Table, metadata: dict) -> None:
    """One table with the run's metadata in its schema, written atomically."""
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()}
    )
    atomic_write(path, lambda partial: pq.write_table(table, partial))


def write_tables(run_dir: Path, tables: dict[str, pa.Table], metadata: dict) -> None:
    """Tables by file name (`epochs.parquet`, `groups.parquet`, ...), each with the metadata."""
    for name, table in tables.items():
        write_parquet(run_dir / name, table, metadata)


def write_run(
    run_dir: Path, epochs: pa.Table, trials: pa.Table, config: ExperimentConfig, metadata: dict
) -> None:
    """The run's two tables and its resolved config, each written atomically."""
    write_tables(run_dir, {"epochs.parquet": epochs, "trials.parquet": trials}, metadata)
    write_config(run_dir, config)


def write_config(run_dir: Path, config: ExperimentConfig) -> None:
    """The resolved config as YAML, loadable again (`--resume` reads it)."""
    text = yaml.safe_dump(config.model_dump(mode="json", exclude_none=True), sort_keys=False)
    atomic_write(run_dir / "config.yaml", lambda path: path.write_text(text))


def run_metadata(config: ExperimentConfig, data_fingerprint: str) -> dict[str, str]:
    """Versions, data fingerprint and git commit: what a reader needs to trace a result."""
    versions = {name: package_metadata.version(name) for name in ("torch", "ray", "optuna")}
    return {
        "experiment": config.name,
        "python": platform.python_version(),
        **versions,
        "pyarrow": pa.__version__,
        "data_fingerprint": data_fingerprint,
        "git_commit": _git_commit() or "",
    }


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
