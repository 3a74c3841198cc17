"""Tune's storage elsewhere than the run folder, and the check that every node can see it."""

from pathlib import Path

import pytest

import tuning.run.cluster
from trainable.data import load_dataset
from tuning.config import ConfigError, ExperimentConfig
from tuning.results.tune_logs import build_tables
from tuning.run.storage import can_resume, join, prepare_storage, tune_location
from tuning.run.tuner import run_tuner
from tuning.search.plan import build_plan


def test_tune_folder_is_the_run_folder_or_under_the_storage(tmp_path):
    run = tmp_path / "results" / "r1"
    assert tune_location(None, run) == str((run / "ray").resolve())
    assert tune_location("/mnt/nfs/runs", run) == "/mnt/nfs/runs/r1/ray"
    assert tune_location("s3://bucket/runs/", run) == "s3://bucket/runs/r1/ray"
    assert join("s3://bucket/runs?region=eu-west-1", "r1") == "s3://bucket/runs/r1?region=eu-west-1"


def test_a_relative_storage_path_is_refused():
    with pytest.raises(ValueError, match="must be an absolute path"):
        ExperimentConfig.model_validate({"run": {"storage": "runs"}})
    assert ExperimentConfig.model_validate({"run": {"storage": "gs://b/runs"}}).run.storage


def test_storage_already_holding_the_run_is_refused_unless_resuming(tmp_path):
    (tmp_path / "store" / "r1" / "ray").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds Tune's state"):
        prepare_storage(str(tmp_path / "store"), tmp_path / "r1", resume=False)
    prepare_storage(str(tmp_path / "store"), tmp_path / "r1", resume=True)
    with pytest.raises(ConfigError, match="cannot be opened"):
        prepare_storage("nope://bucket/runs", tmp_path / "r1", resume=False)


def test_a_run_keeps_tune_state_under_a_storage_uri(ray_session, tmp_path):
    store = tmp_path / "store"
    config = ExperimentConfig.model_validate(
        {
            "data": {"source": "synthetic", "train_subset": 600, "val_size": 200},
            "trial": {"epochs": 2, "hidden": 8},
            "search": {"grid": {"lr": [1e-3, 1e-2]}},
            "run": {"storage": f"file://{store}"},  # read back through pyarrow, like s3://
        }
    )
    run_dir = tmp_path / "results" / "r1"
    run_dir.mkdir(parents=True)
    data = load_dataset(config.data)
    results = run_tuner(config, data, run_dir, build_plan(config, run_dir))
    assert not results.errors
    assert len(list((store / "r1" / "ray").glob("*/result.json"))) == 2
    assert not (run_dir / "ray").exists()
    epochs, trials = build_tables(results, config)
    assert epochs.num_rows == 4
    assert [t["epochs_completed"] for t in trials.to_pylist()] == [2, 2]
    assert can_resume(config.run.storage, run_dir)


def test_the_probe_tells_a_folder_a_node_sees_from_one_it_does_not(ray_session, tmp_path):
    nodes = tuning.run.cluster.trial_nodes()
    node_id = ray_session.get_runtime_context().get_node_id()
    assert tuning.run.cluster.probe_nodes(nodes, str(tmp_path)) == {node_id: True}
    assert tuning.run.cluster.probe_nodes(nodes, str(tmp_path / "nope")) == {node_id: False}


def fake_node(node_id: str, host: str) -> dict:
    return {
        "NodeID": node_id,
        "Alive": True,
        "NodeManagerHostname": host,
        "NodeManagerAddress": "10.0.0.2",
        "Resources": {"CPU": 4.0},
    }


def test_node_local_storage_on_several_nodes_is_refused_with_the_fix(tmp_path, monkeypatch):
    nodes = [fake_node("a" * 56, "head-host"), fake_node("b" * 56, "worker-host")]
    monkeypatch.setattr(tuning.run.cluster, "trial_nodes", lambda: nodes)
    probed = []

    def probe(nodes, marker):
        probed.append(marker)
        assert Path(marker).exists()  # the driver wrote it before asking
        return {"a" * 56: True, "b" * 56: False}

    monkeypatch.setattr(tuning.run.cluster, "probe_nodes", probe)
    with pytest.raises(ConfigError) as err:
        tuning.run.cluster.check_run_storage(None, tmp_path / "run")
    message = str(err.value)
    assert "worker-host (10.0.0.2, bbbbbbbb)" in message and "head-host" not in message
    assert str(tmp_path / "run") in message and "--storage" in message and "s3://" in message
    assert probed and not Path(probed[0]).exists()  # the marker is cleaned up
    assert tuning.run.cluster.check_run_storage("s3://bucket/runs", tmp_path / "run") == []


def test_a_node_that_does_not_answer_is_a_warning(tmp_path, monkeypatch):
    nodes = [fake_node("a" * 56, "head-host"), fake_node("b" * 56, "worker-host")]
    monkeypatch.setattr(tuning.run.cluster, "trial_nodes", lambda: nodes)
    monkeypatch.setattr(
        tuning.run.cluster, "probe_nodes", lambda nodes, marker: {"a" * 56: True, "b" * 56: None}
    )
    (warning,) = tuning.run.cluster.check_run_storage(str(tmp_path), tmp_path / "run")
    assert "worker-host" in warning and "did not answer" in warning
