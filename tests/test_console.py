"""The compact console and every run's Optuna study, fed the events Tune sends."""

import contextlib
import io
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from tests.conftest import run_script, start_script
from tuning.config import ExperimentConfig
from tuning.run.progress import Progress
from tuning.search.study import StudyRecorder, close_study, study_storage, study_url

State = optuna.trial.TrialState


def fake_trial(trial_id: str, lr: float, epochs: int = 3) -> SimpleNamespace:
    return SimpleNamespace(
        trial_id=trial_id,
        config={"lr": lr, "seed": 0, "epochs": epochs},
        last_result={},
        path=f"/runs/x/ray/{trial_id}",
    )


def report(callback, trial, epoch: int, val_acc: float, **extra) -> None:
    trial.last_result = {"epoch": epoch, "training_iteration": epoch, "val_acc": val_acc, **extra}
    callback.on_trial_result(iteration=0, trials=[], trial=trial, result=trial.last_result)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_progress(monkeypatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stdout", stream)
    progress = Progress("val_acc", "max", epochs=3, searched=["lr"], interval_s=0.0)
    progress.setup(total_num_samples=3)
    a, b, c = fake_trial("t0", 0.001), fake_trial("t1", 0.01), fake_trial("t2", 0.1)
    for trial in (a, b):
        progress.on_trial_start(iteration=0, trials=[], trial=trial)
    for epoch in (1, 2, 3):
        report(progress, a, epoch, 0.4 + epoch / 100)
    report(progress, b, 1, 0.2)
    progress.on_trial_complete(iteration=0, trials=[], trial=a)
    progress.on_trial_complete(iteration=0, trials=[], trial=b)  # stopped after 1 of 3
    progress.on_trial_start(iteration=0, trials=[], trial=c)
    progress.on_trial_error(iteration=0, trials=[], trial=c)
    progress.on_experiment_end(trials=[])
    return stream.getvalue()


def test_plain_progress_says_how_each_trial_ended_and_the_best(monkeypatch):
    out = run_progress(monkeypatch, io.StringIO())
    assert "\x1b[" not in out  # a pipe or a log file gets no cursor movements
    lines = out.splitlines()
    assert "completed  t0 lr=0.001  val_acc 0.4300 after 3/3 epochs" in out
    # The tables' words for how each trial ended (tuning.results.outcome).
    assert "early_stopped  t1 lr=0.01  val_acc 0.2000 after 1/3 epochs" in out
    assert "error  t2 lr=0.1  after 0 epochs: see /runs/x/ray/t2" in out
    assert "3/3 trials done (1 early_stopped, 1 error)" in lines[-1]
    assert "best val_acc 0.4300 (t0)" in lines[-1] and "left" not in lines[-1]
    # While trials ran: each plain state line had an estimate once an epoch was in.
    assert any("left" in line and line.startswith("[") for line in lines)


def test_a_terminal_gets_the_live_view_redrawn_in_place(monkeypatch):
    out = run_progress(monkeypatch, Terminal())
    assert "\x1b[" in out and "F\x1b[J" in out  # moved up over the view and erased it
    assert "  t0 lr=0.001  epoch 2/3  val_acc 0.4200" in out  # a running trial's row


def test_the_estimate_counts_unstarted_trials_and_the_rest_of_running_ones(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    progress = Progress("val_acc", "max", epochs=4, searched=[], time_budget_s=None)
    progress.setup(total_num_samples=3)
    trial = fake_trial("t0", 0.001, epochs=4)
    progress.on_trial_start(iteration=0, trials=[], trial=trial)
    report(progress, trial, 1, 0.3)
    progress.first_result -= 10  # one epoch took 10 s
    left = progress.estimate_left(elapsed=10)
    assert left == pytest.approx((3 + 2 * 4) * 10, rel=0.01)  # 3 + 8 epochs at 0.1 epoch/s
    progress.time_budget_s = 60
    assert progress.estimate_left(elapsed=10) == pytest.approx(50)


def test_a_resumed_run_counts_the_trials_that_ended_before_it(monkeypatch):
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    progress = Progress("val_acc", "max", epochs=4, searched=[], interval_s=0.0)
    progress.setup(total_num_samples=3)
    earlier, failed, left = (fake_trial(f"t{i}", 0.001, epochs=4) for i in range(3))
    for trial, status in ((earlier, "TERMINATED"), (failed, "ERROR"), (left, "PENDING")):
        trial.status = status
    earlier.last_result = {"epoch": 4, "val_acc": 0.5}
    progress.on_step_begin(iteration=0, trials=[earlier, failed, left])
    progress.on_trial_start(iteration=0, trials=[], trial=left)
    report(progress, left, 1, 0.3)
    assert "2/3 trials done (2 before this resume)" in progress.state()
    assert "best val_acc 0.5000 (t0)" in progress.state()  # the run's best, not this process's
    progress.first_result -= 10  # one epoch took 10 s: only the running trial's 3 are left
    assert progress.estimate_left(elapsed=10) == pytest.approx(3 * 10, rel=0.01)
    report(progress, left, 4, 0.4)
    progress.on_trial_complete(iteration=1, trials=[], trial=left)
    left.status = "TERMINATED"
    progress.on_step_begin(iteration=1, trials=[earlier, failed, left])  # counted once only
    assert "3/3 trials done (2 before this resume)" in progress.state(final=True)


def test_a_study_file_appears_with_its_whole_schema(tmp_path: Path):
    # optuna-dashboard, or a test, may open study.db the moment it appears; had it been made in
    # place, both would write Optuna's schema ("UNIQUE constraint failed: alembic_version").
    path, first_look = tmp_path / "study.db", []

    def look_as_soon_as_it_exists() -> None:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.0001)
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            try:
                first_look.append(db.execute("SELECT version_num FROM alembic_version").fetchall())
            except sqlite3.Error as err:  # no such table yet, or locked while being made
                first_look.append(str(err))

    watcher = threading.Thread(target=look_as_soon_as_it_exists)
    watcher.start()
    optuna.create_study(storage=study_storage(path), study_name="s")
    watcher.join()
    assert len(first_look) == 1 and isinstance(first_look[0], list), first_look
    assert len(first_look[0]) == 1  # Optuna's schema version, there from the first moment
    assert [p.name for p in tmp_path.iterdir()] == ["study.db"]  # no temporary file left


def grid_config() -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {"trial": {"epochs": 3}, "search": {"grid": {"lr": [0.001, 0.01, 0.1], "seed": [0]}}}
    )


def test_a_grid_is_recorded_in_its_study_as_it_reports(tmp_path: Path):
    run_dir = tmp_path / "my-grid"
    run_dir.mkdir()
    recorder = StudyRecorder(grid_config(), run_dir)
    recorder.setup()
    done, stopped, failed = fake_trial("a", 0.001), fake_trial("b", 0.01), fake_trial("c", 0.1)
    for trial in (done, stopped, failed):
        recorder.on_trial_start(iteration=0, trials=[], trial=trial)
    report(recorder, done, 1, 0.3)
    # Visible to another process mid-run, as optuna-dashboard reads it.
    live = optuna.load_study(study_name="my-grid", storage=study_url(run_dir))
    assert [t.state for t in live.trials] == [State.RUNNING] * 3
    assert live.trials[0].params == {"lr": 0.001, "seed": 0}
    assert live.trials[0].intermediate_values == {1: 0.3}
    for epoch in (2, 3):
        report(recorder, done, epoch, 0.3 + epoch / 10)
    report(recorder, stopped, 1, 0.1)
    recorder.on_trial_complete(iteration=0, trials=[], trial=done)
    recorder.on_trial_complete(iteration=0, trials=[], trial=stopped)
    recorder.on_trial_error(iteration=0, trials=[], trial=failed)
    trials = optuna.load_study(study_name="my-grid", storage=study_url(run_dir)).trials
    assert [t.state for t in trials] == [State.COMPLETE, State.PRUNED, State.FAIL]
    assert trials[0].value == pytest.approx(0.6) and trials[0].user_attrs == {"tune_trial_id": "a"}
    assert trials[1].value == pytest.approx(0.1)  # a pruned trial keeps its last value


@pytest.mark.parametrize("interrupted, state", [(False, State.PRUNED), (True, State.FAIL)])
def test_trials_a_run_left_running_are_ended(tmp_path: Path, interrupted, state):
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    recorder = StudyRecorder(grid_config(), run_dir)
    recorder.setup()
    finished, cut = fake_trial("a", 0.001), fake_trial("b", 0.01)
    for trial in (finished, cut):
        report(recorder, trial, 1, 0.2)
    recorder.on_trial_complete(iteration=0, trials=[], trial=finished)
    assert close_study(run_dir, interrupted=interrupted) == 1
    trials = optuna.load_study(study_name="cut", storage=study_url(run_dir)).trials
    assert [t.state for t in trials] == [State.PRUNED, state]
    assert close_study(run_dir, interrupted=interrupted) == 0


NOISE = ("Checkpoint successfully created", "Configuration for experiment", "repeated", "╭")


@pytest.mark.slow
def test_a_grid_prints_a_few_lines_and_its_study_shows_it_while_it_runs(tmp_path):
    run_dir = tmp_path / "g"
    proc = start_script(
        "tuning/run_grid.py",
        *("--smoke", "--no-dashboard", "--no-report", "--results-dir", str(tmp_path)),
        *("--name", "g", "--set", "trial.epochs=30"),
    )
    live = []
    deadline = time.monotonic() + 240
    while not live and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        if not (run_dir / "study.db").exists():
            continue
        try:  # the file exists a moment before the study does
            study = optuna.load_study(study_name="g", storage=study_url(run_dir))
        except KeyError:
            continue
        live = [t for t in study.trials if t.state == State.RUNNING and t.intermediate_values]
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert live, "no trial was visible in study.db while the grid ran"
    assert not any(noise in out for noise in NOISE), out
    assert len(out.splitlines()) <= 25, out
    assert "optuna-dashboard sqlite:///" in out and "completed" in out
    trials = optuna.load_study(study_name="g", storage=study_url(run_dir)).trials
    assert [t.state for t in trials] == [State.COMPLETE] * 2
    assert all(len(t.intermediate_values) == 30 for t in trials)


@pytest.mark.slow
def test_verbose_brings_tunes_own_output_back(tmp_path):
    proc = run_script(
        "tuning/run_grid.py",
        *("--smoke", "--no-dashboard", "--no-report", "--results-dir", str(tmp_path), "--verbose"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trial status" in proc.stdout + proc.stderr
