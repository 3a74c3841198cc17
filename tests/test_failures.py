"""Nothing lost: crashed trials restart from checkpoints, divergence is a status."""

import os
import pickle
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import tuning.run.tuner
from tests.conftest import local_trainable
from trainable.checkpoint import CHECKPOINT_FILE, load
from trainable.data import load_dataset
from trainable.trainable import CifarTrainable, SharedData
from tuning.config import ExperimentConfig
from tuning.results.tables import write_run
from tuning.results.tune_logs import build_tables, trial_epochs
from tuning.search.plan import build_plan

TINY = {
    "data": {"source": "synthetic", "train_subset": 600, "val_size": 200, "test_subset": 200},
    "trial": {"hidden": 8, "epochs": 3, "batch_size": 100},
}


class CrashOnce(CifarTrainable):
    """Kills its own worker process halfway through epoch 2, the first time only."""

    marker: str = ""  # set by the test; a class attribute travels with the pickled class

    def step(self):
        if self.training.epoch == 1 and not os.path.exists(self.marker):
            Path(self.marker).touch()
            self.training.train_epoch()  # work in progress, never reported
            os._exit(1)
        return super().step()


def test_a_killed_trial_restarts_from_its_checkpoint(ray_session, tmp_path, monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))  # workers cannot import tests
    monkeypatch.setattr(CrashOnce, "marker", str(tmp_path / "crashed"))
    monkeypatch.setattr(tuning.run.tuner, "CifarTrainable", CrashOnce)
    config = ExperimentConfig.model_validate(TINY)
    data = load_dataset(config.data)
    results = tuning.run.tuner.run_tuner(config, data, tmp_path, build_plan(config, tmp_path))
    assert (tmp_path / "crashed").exists()
    assert not results.errors
    epochs, trials = build_tables(results, config)
    assert epochs.column("epoch").to_pylist() == [1, 2, 3]  # exactly one row per epoch
    row = trials.to_pylist()[0]
    assert (row["status"], row["restarts"], row["epochs_completed"]) == ("completed", 1, 3)


def test_a_trial_restored_from_its_last_checkpoint_ends_without_training_more(
    ray_session, tmp_path
):
    # A crash or an interrupted run can fall between a trial's last checkpoint and Tune
    # recording its end; Tune then restores it and asks for another epoch.
    config = ExperimentConfig.model_validate(TINY)
    shared = SharedData(ray_session.put(load_dataset(config.data)))

    Local = local_trainable(shared, tmp_path)

    class OtherTrial(Local):  # as PBT restores a trial from another trial's checkpoint
        trial_id = "another"

    trial = config.trial.model_dump()
    finished = Local(trial)
    reports = [finished.step() for _ in range(3)]
    assert reports[-1]["done"] and reports[-1]["epoch"] == 3
    finished.save_checkpoint(str(tmp_path))

    restored = Local(trial)
    restored.load_checkpoint(str(tmp_path))
    assert restored.step() == reports[-1]  # the last epoch again, test accuracy included
    assert restored.training.epoch == 3

    cloned = OtherTrial(trial)
    cloned.load_checkpoint(str(tmp_path))
    assert cloned.step()["epoch"] == 4  # not its own end: it trains on


def test_divergence_is_a_status_not_a_crash(ray_session, tmp_path):
    config = ExperimentConfig.model_validate(
        {
            **TINY,
            "trial": {**TINY["trial"], "optimizer": "sgd"},
            "search": {"grid": {"lr": [0.01, 1e6]}},
        }
    )
    data = load_dataset(config.data)
    results = tuning.run.tuner.run_tuner(config, data, tmp_path, build_plan(config, tmp_path))
    assert not results.errors
    _, trials = build_tables(results, config)
    by_lr = {row["lr"]: row for row in trials.to_pylist()}
    assert by_lr[0.01]["status"] == "completed"
    assert by_lr[1e6]["status"] == "diverged" and by_lr[1e6]["epochs_completed"] < 3


def test_epochs_missing_from_result_json_come_from_progress_csv(tmp_path):
    # ray issue 41668: after a restore, result.json can lack a row that progress.csv has.
    (tmp_path / "result.json").write_text(
        '{"epoch": 1, "val_acc": 0.5}\n{"epoch": 3, "val_acc": 0.7}\n'
    )
    (tmp_path / "progress.csv").write_text(
        "epoch,val_acc,trial_id\n1,0.5,a_1\n2,0.6,a_1\n3,0.7,a_1\n"
    )
    rows = trial_epochs(tmp_path)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert rows[1]["trial_id"] == "a_1"


def test_a_crash_during_export_keeps_the_previous_files(tmp_path, monkeypatch):
    import pyarrow as pa

    config = ExperimentConfig()
    table = pa.table({"trial_id": ["a"]})
    write_run(tmp_path, table, table, config, {"v": "1"})
    before = (tmp_path / "trials.parquet").read_bytes()

    def half_write(table, path):
        Path(path).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_run(tmp_path, table, table, config, {"v": "2"})
    assert (tmp_path / "epochs.parquet").exists()
    assert (tmp_path / "trials.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml",
        "epochs.parquet",
        "trials.parquet",
    ]


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoints_load_as_data_only(tmp_path):
    with open(tmp_path / CHECKPOINT_FILE, "wb") as f:
        pickle.dump({"model": Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load(str(tmp_path), torch.device("cpu"))
