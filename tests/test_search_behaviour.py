"""What searchers and schedulers do to the trials, seen in the tables and the study they leave:
a stepped dimension proposed on its steps, ASHA's stops recorded as PRUNED, PBT's changes of lr
between epochs, and a user's model shipped to a cluster's nodes."""

import os

import optuna
import pyarrow.parquet as pq
import pytest

from tests.conftest import run_script, tiny_config
from trainable.data import load_dataset
from tuning.config.keys import PROMOTES_MARK, TUNE_TRIAL_MARK
from tuning.results.tune_logs import build_tables
from tuning.run.tuner import run_tuner
from tuning.search.plan import build_plan
from tuning.search.study import study_url

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data)


def search(config, data, run_dir):
    """Run the config's search in `run_dir`; its epoch and trial tables as row dicts, and its
    study's trials by Tune trial id (empty where no study was kept)."""
    results = run_tuner(config, data, run_dir, build_plan(config, run_dir), verbose=False)
    assert not results.errors
    epochs, trials = (table.to_pylist() for table in build_tables(results, config))
    studied = {}
    if (run_dir / "study.db").exists():
        study = optuna.load_study(study_name=run_dir.name, storage=study_url(run_dir))
        studied = {t.user_attrs[TUNE_TRIAL_MARK]: t for t in study.trials}
    return epochs, trials, studied


def on_step(value: float, low: float, step: float) -> bool:
    return abs((value - low) / step - round((value - low) / step)) < 1e-6


def test_a_stepped_dimension_is_searched_on_its_steps(ray_session, data, tmp_path):
    config = tiny_config(
        trial={"epochs": 1},
        search={
            "kind": "optuna",
            "space": {"lr": {"quniform": [0.001, 0.01, 0.001]}},
            "num_samples": 6,
            "max_concurrent": 2,
        },
        scheduler={"kind": "fifo"},
    )
    _, trials, studied = search(config, data, tmp_path)
    lrs = [row["lr"] for row in trials]
    assert len(lrs) == 6 and {row["status"] for row in trials} == {"completed"}
    assert all(0.001 <= lr <= 0.01 + 1e-12 and on_step(lr, 0.001, 0.001) for lr in lrs), lrs
    assert len(set(lrs)) > 2  # searched, not one value
    assert set(studied) == {row["trial_id"] for row in trials}
    stepped = optuna.distributions.FloatDistribution(0.001, 0.01, step=0.001)
    for row in trials:
        assert studied[row["trial_id"]].distributions == {"lr": stepped}
        assert studied[row["trial_id"]].params["lr"] == pytest.approx(row["lr"], abs=1e-12)


def test_asha_stops_are_pruned_trials_in_the_study(ray_session, data, tmp_path):
    # The trial section's lr first (it learns), then trials drawn between it and an lr that
    # cannot learn in 3 epochs; one at a time, so each meets the earlier ones' scores at a rung.
    config = tiny_config(
        trial={"epochs": 3, "lr": 3e-3},
        search={
            "kind": "optuna",
            "space": {"lr": {"choice": [3e-3, 1e-7]}},
            "num_samples": 6,
            "max_concurrent": 1,
        },
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    epochs, trials, studied = search(config, data, tmp_path)
    statuses = [row["status"] for row in trials]
    assert "early_stopped" in statuses and "completed" in statuses, statuses
    assert set(statuses) <= {"early_stopped", "completed"}
    assert set(studied) == {row["trial_id"] for row in trials}  # one study trial each
    for row in trials:
        recorded = studied[row["trial_id"]]
        val_accs = {e["epoch"]: e["val_acc"] for e in epochs if e["trial_id"] == row["trial_id"]}
        assert list(val_accs) == list(range(1, row["epochs_completed"] + 1))
        assert recorded.intermediate_values == val_accs  # every epoch it trained
        # A pruned trial's value is its last epoch's (Optuna's rule for PRUNED without one).
        assert recorded.value == row["final_val_acc"] == val_accs[row["epochs_completed"]]
        if row["status"] == "early_stopped":
            assert recorded.state == PRUNED and row["epochs_completed"] < 3
        else:
            assert recorded.state == COMPLETE and row["epochs_completed"] == 3


def test_halving_retrains_the_best_of_a_rung_with_the_next_budget(ray_session, data, tmp_path):
    config = tiny_config(
        trial={"epochs": 4, "lr": 3e-3},
        search={
            "kind": "optuna",
            "space": {"lr": {"loguniform": [1e-5, 1e-2]}},
            "num_samples": 10,
            "max_concurrent": 2,
        },
        scheduler={"kind": "halving", "grace_period": 1, "reduction_factor": 2},
    )
    epochs, trials, studied = search(config, data, tmp_path)
    assert {row["status"] for row in trials} == {"completed"}
    assert all(row["epochs_completed"] == row["epochs"] for row in trials)  # its own budget
    by_number = {t.number: t for t in studied.values()}
    promoted = [row for row in trials if row["epochs"] > 1]
    assert promoted and {row["epochs"] for row in trials} <= {1, 2, 4}
    for row in trials:
        recorded = studied[row["trial_id"]]
        assert recorded.state == (COMPLETE if row["epochs"] == 4 else PRUNED)
        if PROMOTES_MARK not in recorded.user_attrs:  # a new configuration at the first rung,
            assert row["epochs"] == 1 or (row["lr"] == 3e-3 and row["epochs"] == 4)  # first point
            continue
        source = by_number[recorded.user_attrs[PROMOTES_MARK]]
        assert source.params == recorded.params  # the same configuration, trained again
        assert max(source.intermediate_values) == row["epochs"] // 2  # from the rung below
        # Trained afresh, every epoch of its own budget from the first.
        trained = [e["epoch"] for e in epochs if e["trial_id"] == row["trial_id"]]
        assert trained == list(range(1, row["epochs"] + 1))


def test_pbt_changes_a_trials_lr_between_its_epochs(ray_session, data, tmp_path):
    config = tiny_config(
        trial={"epochs": 4},
        search={"kind": "random", "space": {"lr": {"loguniform": [1e-5, 1e-2]}}, "num_samples": 4},
        scheduler={"kind": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5},
    )
    epochs, trials, _ = search(config, data, tmp_path)
    assert {row["status"] for row in trials} == {"completed"}
    changed = []
    for row in trials:
        own = sorted(
            (e for e in epochs if e["trial_id"] == row["trial_id"]), key=lambda e: e["epoch"]
        )
        assert [e["epoch"] for e in own] == [1, 2, 3, 4]
        assert own[-1]["lr"] == row["lr"]  # the trial's table row: the config it ended with
        if len({e["lr"] for e in own}) > 1:
            changed.append(row["trial_id"])
    assert changed, "no trial's lr changed between epochs"


MODEL = """
from torch import nn


def tiny(input_shape, num_classes, width=4):
    return nn.Sequential(
        nn.Flatten(), nn.LazyLinear(width), nn.ReLU(), nn.Linear(width, num_classes)
    )
"""


@pytest.mark.slow
def test_a_users_model_is_shipped_to_the_clusters_nodes(cluster, tmp_path):
    # The module is on the driver's PYTHONPATH alone: the nodes were started without it, and
    # the driver runs from the repository, so only py_modules can bring it to their workers.
    code = tmp_path / "code"
    code.mkdir()
    (code / "shipped_usermodels.py").write_text(MODEL)
    python_path = os.pathsep.join(filter(None, [str(code), os.environ.get("PYTHONPATH")]))
    proc = run_script(
        "tuning/run_grid.py",
        *("--smoke", "--no-report", "--results-dir", str(tmp_path), "--name", "shipped"),
        *("--set", "trial.model=shipped_usermodels:tiny"),
        *("--set", "search.grid={model_args.width: [2, 6]}"),
        *("--address", cluster.address),
        env={**cluster.auth, "PYTHONPATH": python_path},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"joined the Ray cluster at {cluster.address}: 2 nodes" in proc.stdout
    trials = pq.read_table(tmp_path / "shipped" / "trials.parquet").to_pylist()
    assert sorted(row["model_args.width"] for row in trials) == [2, 6]
    assert [row["status"] for row in trials] == ["completed"] * 2
    assert {row["model"] for row in trials} == {"shipped_usermodels:tiny"}
    assert len({row["node_id"] for row in trials}) == 2  # one trial on each node
