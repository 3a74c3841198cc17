"""The entry scripts as a user runs them, each in a process of its own."""

import json

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import run_script
from tuning.export import EPOCH_FIELDS, TRIAL_FIELDS


@pytest.mark.slow
def test_grid_smoke_writes_the_contract_tables(tmp_path):
    proc = run_script(
        "tuning/run_grid.py",
        "--smoke",
        "--no-dashboard",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "smoke"
    epochs, trials = pq.read_table(run / "epochs.parquet"), pq.read_table(run / "trials.parquet")
    assert set(EPOCH_FIELDS) | {"lr", "batch_size", "seed"} <= set(epochs.column_names)
    assert set(TRIAL_FIELDS) | {"lr", "batch_size", "seed"} <= set(trials.column_names)
    assert trials.num_rows == 2 and epochs.num_rows == 4
    assert sorted(epochs.column("epoch").to_pylist()) == [1, 1, 2, 2]
    assert set(trials.column("status").to_pylist()) == {"completed"}
    meta = json.loads(trials.schema.metadata[b"cifar_tune"])
    assert {"python", "torch", "ray", "optuna", "data_fingerprint", "git_commit"} <= set(meta)
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["source"] == "synthetic" and resolved["trial"]["epochs"] == 2
    assert (run / "ray").is_dir()
    assert "| 0.001 | 1 | 2 |" in proc.stdout and "0.4363" in proc.stdout  # the original's figure
    assert not list(run.glob(".*partial"))


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "trial.lr=0"], "trial.lr"),
        (["--set", "trial.nope=1"], "'nope' is not a key of trial"),
        (["--config", "missing.yaml"], "cannot read config"),
        (["--data-dir", "tests"], "holds neither CIFAR-10's files"),
    ],
)
def test_bad_input_exits_2_without_traceback(tmp_path, args, expected):
    proc = run_script("tuning/run_grid.py", "--results-dir", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "trials.parquet").write_text("keep me")
    proc = run_script(
        "tuning/run_grid.py",
        "--smoke",
        "--results-dir",
        str(tmp_path),
        "--name",
        "taken",
        timeout=120,
    )
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (tmp_path / "taken" / "trials.parquet").read_text() == "keep me"


@pytest.mark.slow
def test_optuna_smoke_writes_tables_study_and_summary(tmp_path):
    proc = run_script(
        "tuning/run_optuna.py",
        "--smoke",
        "--no-dashboard",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "smoke"
    trials = pq.read_table(run / "trials.parquet")
    assert trials.num_rows == 2 and pq.read_table(run / "epochs.parquet").num_rows >= 2
    assert {"lr", "batch_size", "hidden", "weight_decay", "optimizer"} <= set(trials.column_names)
    assert len([t for t in trials.column("test_acc").to_pylist() if t is not None]) == 1
    assert (run / "study.db").exists()
    assert "best trial" in proc.stdout and "epochs trained:" in proc.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "scheduler.grace_period=12"], "grace_period"),
        (["--set", "search.space={}"], "needs a non-empty search.space"),
        (["--set", "search.kind=grid"], "a grid uses search.grid"),
        (["--set", "scheduler.kind=bohb"], "scheduler.kind"),
    ],
)
def test_optuna_refuses_bad_combinations_before_starting(tmp_path, args, expected):
    proc = run_script("tuning/run_optuna.py", "--results-dir", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2 and expected in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []
