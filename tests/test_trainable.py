"""The trainable under real Ray Tune, and the tables built from what it reported."""

import io
import json
import socket
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import local_trainable
from trainable.data import load_dataset
from trainable.trainable import SharedData
from tuning.config import ExperimentConfig
from tuning.config.space import param_space
from tuning.results.tables import EPOCH_FIELDS, TRIAL_FIELDS
from tuning.results.tune_logs import build_tables
from tuning.run.tuner import run_tuner, share_data
from tuning.search.plan import build_plan


@pytest.fixture(scope="module")
def grid_run(ray_session, tmp_path_factory):
    config = ExperimentConfig.model_validate(
        {
            "data": {"source": "synthetic", "train_subset": 2000, "val_size": 500},
            "trial": {"epochs": 3, "hidden": 16},
            "search": {"grid": {"lr": [1e-3, 1e-4]}},
        }
    )
    run_dir = tmp_path_factory.mktemp("run")
    data = load_dataset(config.data)
    results = run_tuner(config, data, run_dir, build_plan(config, run_dir))
    return config, run_dir, results


def test_param_space_crosses_the_grid_and_keeps_run_settings_out():
    config = ExperimentConfig.model_validate({"search": {"grid": {"lr": [0.1, 0.2], "seed": [1]}}})
    space = param_space(config)
    assert space["lr"] == {"grid_search": [0.1, 0.2]} and space["seed"] == {"grid_search": [1]}
    assert space["batch_size"] == 64
    assert set(space) == set(config.trial.model_dump())  # no data dir, threads or devices


def test_every_epoch_is_reported_and_test_only_at_the_end(grid_run):
    _, run_dir, results = grid_run
    assert len(results) == 2 and not results.errors
    for result in results:
        rows = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
        assert [r["epoch"] for r in rows] == [1, 2, 3]
        for row in rows:
            assert {"train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s"} <= set(row)
        assert [("test_acc" in r) for r in rows] == [False, False, True]
        assert Path(result.path).parent == run_dir / "ray"
        assert result.checkpoint is not None


def test_seeds_and_lrs_reach_the_trials(grid_run):
    _, _, results = grid_run
    assert sorted(r.config["lr"] for r in results) == [1e-4, 1e-3]
    assert {r.config["hidden"] for r in results} == {16}


def test_tables_hold_one_row_per_epoch_and_trial(grid_run):
    config, _, results = grid_run
    epochs, trials = build_tables(results, config)
    assert epochs.column_names[: len(EPOCH_FIELDS)] == list(EPOCH_FIELDS)
    assert {"lr", "batch_size", "seed", "hidden"} <= set(epochs.column_names)
    assert epochs.num_rows == 6 and trials.num_rows == 2
    assert set(TRIAL_FIELDS) <= set(trials.column_names)
    rows = trials.to_pylist()
    assert {r["status"] for r in rows} == {"completed"}
    for row in rows:
        mine = [e for e in epochs.to_pylist() if e["trial_id"] == row["trial_id"]]
        assert [e["epoch"] for e in mine] == [1, 2, 3]
        assert row["best_val_acc"] == max(e["val_acc"] for e in mine)
        assert row["final_val_acc"] == mine[-1]["val_acc"]
        assert row["train_time_s"] == pytest.approx(sum(e["epoch_time_s"] for e in mine))
        assert 0.1 < row["test_acc"] <= 1
        # Each of the session Ray's 2 CPUs is held by a trial or lent to one: never more.
        assert all(e["threads"] == 1 for e in mine)  # one per CPU the trial holds


def test_shared_data_leaves_the_driver_reading_the_object_stores_copy(ray_session):
    data = load_dataset(
        ExperimentConfig.model_validate({"data": {"source": "synthetic", "val_size": 500}}).data
    )
    before = {name: getattr(data, name).copy() for name in ("train_x", "val_y", "test_x")}
    assert data.train_x.flags.writeable  # the driver's own copy
    shared = share_data(data)
    for name, array in before.items():
        # Same values, now read-only views of the object store's pages: no private copy left.
        assert not getattr(data, name).flags.writeable
        np.testing.assert_array_equal(getattr(data, name), array)
    np.testing.assert_array_equal(shared.get().train_x, before["train_x"])


def test_trials_record_where_they_ran(grid_run, ray_session):
    config, _, results = grid_run
    _, trials = build_tables(results, config)
    node = ray_session.get_runtime_context().get_node_id()
    for row in trials.to_pylist():
        assert (row["node_id"], row["hostname"], row["device"]) == (
            node,
            socket.gethostname(),
            "cpu",
        )


def test_a_trial_actor_prints_no_exit_from_a_finalizer_but_every_other_error(ray_session, tmp_path):
    # Ray stops trial actors with SIGTERM at the end of a run; caught inside a weakref callback,
    # its SystemExit printed "Exception ignored ... SystemExit: 1" on the driver's console.
    config = ExperimentConfig.model_validate(
        {"data": {"source": "synthetic", "train_subset": 200, "val_size": 100}}
    )
    shared = SharedData(ray_session.put(load_dataset(config.data)))

    def finalizer_output(_trial) -> str:  # defined here: Ray ships it to the actor by value
        """What the actor prints for a finalizer that exits (as Ray's SIGTERM handler does
        inside one) and for one that fails."""

        class Thing:
            pass

        def exits(_):
            raise SystemExit(1)

        def fails(_):
            raise ValueError("a real bug")

        printed, sys.stderr = sys.stderr, io.StringIO()
        try:
            first, second = Thing(), Thing()
            refs = [weakref.ref(first, exits), weakref.ref(second, fails)]
            del first, second
            return sys.stderr.getvalue()
        finally:
            sys.stderr = printed
            del refs

    trial = ray_session.remote(num_cpus=0)(local_trainable(shared, tmp_path))
    actor = trial.remote(config.trial.model_dump())
    printed = ray_session.get(actor.__ray_call__.remote(finalizer_output))
    assert "ValueError: a real bug" in printed
    assert "SystemExit" not in printed
