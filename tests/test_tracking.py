"""Where teams already look: every run in a real MLflow tracking server, TensorBoard's event
files readable, and the study's objective named after the run's metric."""

import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.conftest import finished_trials, free_port, run_main, run_script, start_script
from tuning.search.study import open_study, study_url

mlflow = pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, for this module's tests."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
            "--default-artifact-root", str(folder / "artifacts"), "--workers", "1",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    yield uri
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def runs_of(uri: str, experiment: str, stage: str | None = None) -> list:
    client = mlflow.tracking.MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment named {experiment}"
    where = f"tags.stage = '{stage}'" if stage else ""
    return client.search_runs([found.experiment_id], where, max_results=100)


def history(uri: str, run, metric: str) -> list[tuple[int, float]]:
    client = mlflow.tracking.MlflowClient(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))


GRID = [
    "--smoke", "--no-dashboard", "--no-report",
    "--set", "search.grid.lr=[0.001, 0.0001, 0.01]", "--set", "trial.epochs=3",
]  # fmt: skip


@pytest.mark.slow
def test_a_grid_leaves_an_experiment_of_three_runs_with_params_and_steps(mlflow_server, tmp_path):
    proc = run_script(
        "tuning/run_grid.py", *GRID, "--results-dir", str(tmp_path), "--name", "g",
        "--set", f"run.mlflow={mlflow_server}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = runs_of(mlflow_server, "g", "search")
    assert len(trials) == 3
    assert sorted(float(r.data.params["lr"]) for r in trials) == [0.0001, 0.001, 0.01]
    for run in trials:
        assert run.data.params["seed"] == "0" and run.info.status == "FINISHED"
        assert run.data.tags["status"] == "completed"
        assert [step for step, _ in history(mlflow_server, run, "val_acc")] == [1, 2, 3]
        assert "test_acc" in run.data.metrics  # a grid's trials judge themselves on test
    (groups,) = runs_of(mlflow_server, "g", "groups")
    assert groups.data.tags["winner"].startswith("lr ") and "rank3.test_acc_mean" in (
        groups.data.metrics
    )
    # optuna-dashboard's plots name the metric.
    study = optuna.load_study(study_name="g", storage=study_url(tmp_path / "g"))
    assert study.metric_names == ["val_acc"]
    # TensorBoard: each trial's validation accuracy at every epoch, in its event file.
    for trial in (tmp_path / "g" / "ray").glob("*/"):
        if (trial / "result.json").exists():
            steps = scalars(trial, "ray/tune/val_acc")
            assert [step for step, _ in steps] == [1, 2, 3], trial


@pytest.mark.slow
def test_a_resumed_grid_continues_its_mlflow_runs(mlflow_server, tmp_path):
    run = tmp_path / "c"
    slow = ["--set", "trial.hidden=1024", "--set", "data.train_subset=4000"]
    proc = start_script(
        "tuning/run_grid.py", *GRID, *slow, "--set", "search.max_concurrent=1",
        "--set", "trial.epochs=4", "--results-dir", str(tmp_path), "--name", "c",
        "--set", f"run.mlflow={mlflow_server}",
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (finished_trials(run / "ray", 4) and len(list(run.glob("ray/*/"))) >= 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    resumed = run_script(
        "tuning/run_grid.py", "--resume", "--name", "c", "--results-dir", str(tmp_path),
        "--no-dashboard",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = runs_of(mlflow_server, "c", "search")
    assert len(trials) == 3  # not one more per trial the interruption cut
    assert {r.data.tags["status"] for r in trials} == {"completed"}
    for trial in trials:
        assert [step for step, _ in history(mlflow_server, trial, "val_acc")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_search_leaves_its_trials_finalists_and_winner(mlflow_server, tmp_path):
    proc = run_script(
        "tuning/run_optuna.py", "--smoke", "--no-dashboard", "--no-report",
        "--results-dir", str(tmp_path), "--name", "s", "--set", f"run.mlflow={mlflow_server}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs_of(mlflow_server, "s", "search")) == 2
    finalists = runs_of(mlflow_server, "s", "finalists")
    assert len(finalists) == 2 and all("test_acc" in r.data.metrics for r in finalists)
    (groups,) = runs_of(mlflow_server, "s", "groups")
    assert groups.data.tags["winner"] == "finalist 1"


def test_an_unreachable_server_exits_2_before_anything_is_made(tmp_path):
    proc = run_main(
        "tuning/run_grid.py", "--smoke", "--results-dir", str(tmp_path), "--name", "u",
        "--set", f"run.mlflow=http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert proc.returncode == 2
    assert "does not answer" in proc.stderr and "mlflow server" in proc.stderr
    assert not (tmp_path / "u").exists()


def test_a_uri_with_a_password_exits_2_unechoed(tmp_path):
    proc = run_main(
        "tuning/run_grid.py", "--smoke", "--results-dir", str(tmp_path), "--name", "p",
        "--set", "run.mlflow=http://me:s3cr3t-pass@127.0.0.1:5000",
    )  # fmt: skip
    assert proc.returncode == 2 and "carries credentials" in proc.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in proc.stderr
    assert "s3cr3t-pass" not in proc.stderr + proc.stdout
    assert not (tmp_path / "p").exists()


def test_a_server_that_goes_away_costs_a_warning_not_the_run(monkeypatch, caplog, tmp_path):
    from tuning.run import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker(uri, "gone")
    run_id, made = tracker.run_for("t1", "t1", {"stage": "search"})
    assert made and run_id

    def refuse(*args, **kwargs):
        raise ConnectionError("server went away")

    monkeypatch.setattr(tracker.client, "log_batch", refuse)
    for step in (1, 2):
        tracker.log(run_id, metrics={"val_acc": 0.5}, step=step)  # no exception
    assert caplog.text.count("failed to log to a run") == 1  # once, not per call
    assert "the run and its tables go on" in caplog.text
    assert tracker.run_for("t1", "t1", {}) == (run_id, False)  # found again, not made twice


def test_the_study_names_its_objective_after_the_metric(tmp_path):
    (tmp_path / "r").mkdir()  # a run folder
    study = open_study(tmp_path / "r", metric="train_loss", mode="min")
    assert study.metric_names == ["train_loss"]
    again = open_study(tmp_path / "r", metric="train_loss", mode="min")  # a resume opens it
    assert again.metric_names == ["train_loss"] and again.study_name == "r"


def scalars(trial_dir: Path, tag: str) -> list[tuple[int, float]]:
    """A tag's (step, value) pairs in a trial folder's TensorBoard event files: TFRecords of
    Event protos (length, its CRC, the record, its CRC), read with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            record = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.tag == tag:
                    found.append((event.step, value.simple_value))
    return sorted(found)


def test_a_resumed_trial_logs_each_epoch_once():
    from types import SimpleNamespace

    from tuning.run.tracking import MlflowTrials

    logged = []
    history = [SimpleNamespace(step=1)]  # the interrupted session logged epoch 1
    tracker = SimpleNamespace(
        run_for=lambda *args: ("run", False),  # the earlier session's run, reopened
        call=lambda what, action: action(),
        client=SimpleNamespace(get_metric_history=lambda run_id, key: history),
        log=lambda run_id, **kwargs: logged.append(kwargs.get("step")),
    )
    callback = MlflowTrials("uri", "c", "search", epochs=3)
    callback.tracker, callback.runs, callback.logged_before = tracker, {}, {}
    trial = SimpleNamespace(trial_id="t", config={})
    # No checkpoint reached Tune before the interruption: the resume trains epoch 1 again.
    for epoch in (1, 2, 3):
        callback.on_trial_result(0, [], trial, {"epoch": epoch, "train_loss": 1.0})
    assert logged == [2, 3]
