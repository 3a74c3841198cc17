"""The entry scripts as a user runs them, each in a process of its own."""

import json
import os
import re
import shlex
import signal
import subprocess
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import (
    REPO,
    SLOW_GRID,
    finished_trials,
    kill_when,
    run_main,
    run_script,
    start_script,
    wait_for,
)
from tuning.results.tables import EPOCH_FIELDS, TRIAL_FIELDS


def smoke_run(script: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`--smoke` through an entry script; fails the test unless it exits 0."""
    proc = run_script(
        f"tuning/{script}",
        "--smoke",
        "--no-dashboard",
        "--results-dir",
        str(tmp_path),
        "--name",
        "smoke",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, tmp_path / "smoke"


@pytest.mark.slow
def test_grid_smoke_writes_the_contract_tables(tmp_path):
    proc, run = smoke_run("run_grid.py", tmp_path)
    epochs, trials = pq.read_table(run / "epochs.parquet"), pq.read_table(run / "trials.parquet")
    assert set(EPOCH_FIELDS) | {"lr", "batch_size", "seed"} <= set(epochs.column_names)
    assert set(TRIAL_FIELDS) | {"lr", "batch_size", "seed"} <= set(trials.column_names)
    assert trials.num_rows == 2 and epochs.num_rows == 4
    assert sorted(epochs.column("epoch").to_pylist()) == [1, 1, 2, 2]
    assert set(trials.column("status").to_pylist()) == {"completed"}
    meta = json.loads(trials.schema.metadata[b"cifar_tune"])
    assert {"python", "torch", "ray", "optuna", "data_fingerprint", "git_commit"} <= set(meta)
    # Where the time went: every driver phase, and when each trial trained within Tune's fit.
    timings = meta["timings_s"]
    assert {"data_load", "ray_start", "data_to_object_store", "trials", "export"} <= set(timings)
    assert set(timings["training_spans"]) == set(trials.column("trial_id").to_pylist())
    assert all(0 < a < b < timings["trials"] for a, b in timings["training_spans"].values())
    assert "time: data load" in proc.stdout
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["data"]["source"] == "synthetic" and resolved["trial"]["epochs"] == 2
    assert (run / "ray").is_dir()
    assert "| 0.001 | 1 | 2 |" in proc.stdout and "0.4363" in proc.stdout  # the original's figure
    assert not list(run.glob(".*partial"))
    assert (run / "learning_curves.png").stat().st_size > 5000 and (run / "report.md").exists()


@pytest.mark.parametrize(
    "script, args, expected",
    [
        ("run_grid.py", ["--set", "trial.lr=0"], "trial.lr"),
        ("run_grid.py", ["--set", "trial.nope=1"], "'nope' is not a key of trial"),
        ("run_grid.py", ["--config", "missing.yaml"], "cannot read config"),
        ("run_grid.py", ["--data-dir", "tests"], "holds neither CIFAR-10's files"),
        (
            "run_optuna.py",
            ["--set", "scheduler.kind=asha", "--set", "scheduler.grace_period=99"],
            "grace_period",
        ),
        ("run_optuna.py", ["--set", "search.space={}"], "needs a non-empty search.space"),
        ("run_optuna.py", ["--set", "search.kind=grid"], "a grid uses search.grid"),
        ("run_optuna.py", ["--set", "scheduler.kind=bohb"], "scheduler.kind"),
        ("run_grid.py", ["--smoke", "--storage", "nope://bucket/runs"], "cannot be opened"),
        ("run_grid.py", ["--smoke", "--set", "run.storage=runs"], "must be an absolute path"),
        ("run_grid.py", ["--smoke", "--address", "127.0.0.1:1"], "no Ray cluster answers"),
        ("run_grid.py", ["--smoke", "--set", "trial.model=nosuchpackage:build"], "cannot import"),
        (
            "run_grid.py",
            ["--smoke", "--set", "search.grid={model_args.width: [2]}"],
            "only affects a model of your own",
        ),
    ],
)
def test_bad_input_exits_2_without_traceback_or_files(tmp_path, script, args, expected):
    proc = run_main(f"tuning/{script}", "--results-dir", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_an_existing_run_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "trials.parquet").write_text("keep me")
    proc = run_main(
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
    proc, run = smoke_run("run_optuna.py", tmp_path)
    trials = pq.read_table(run / "trials.parquet")
    assert trials.num_rows == 2 and pq.read_table(run / "epochs.parquet").num_rows >= 2
    assert {"lr", "batch_size", "hidden", "weight_decay", "optimizer"} <= set(trials.column_names)
    # The finalists judge the choice on test; no single-seed judgement beside them.
    assert trials.column("test_acc").to_pylist() == [None, None]
    final = pq.read_table(run / "final.parquet").to_pylist()
    assert len(final) == 2 and all(row["test_acc"] is not None for row in final)
    assert (run / "study.db").exists()
    assert "best trial" in proc.stdout and "epochs trained:" in proc.stdout
    assert "judged over the finalists' re-runs" in proc.stdout
    assert f"optuna-dashboard sqlite:///{run.resolve()}/study.db" in proc.stdout
    assert (run / "param_importances.png").exists()  # two trials with a result: enough


@pytest.mark.slow
def test_a_killed_run_resumes_without_rerunning_finished_trials(tmp_path):
    args = [*SLOW_GRID, "--results-dir", str(tmp_path), "--name", "r"]
    run = tmp_path / "r"
    proc = start_script("tuning/run_grid.py", *args, "--set", "trial.epochs=5")
    kill_when(  # the driver and the Ray it started
        proc, lambda: len(finished_trials(run / "ray")) >= 1 and len(list(run.glob("ray/*"))) >= 2
    )
    done = {p.name: (p / "result.json").read_text() for p in finished_trials(run / "ray")}

    again = run_script("tuning/run_grid.py", "--results-dir", str(tmp_path), "--name", "r")
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a run

    resumed = run_script(
        "tuning/run_grid.py",
        "--results-dir",
        str(tmp_path),
        "--name",
        "r",
        "--resume",
        "--no-dashboard",
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3
    epochs = pq.read_table(run / "epochs.parquet")
    for trial in trials:
        mine = [e["epoch"] for e in epochs.to_pylist() if e["trial_id"] == trial["trial_id"]]
        assert mine == [1, 2, 3, 4, 5]
    for trial_id, log in done.items():  # finished before the kill: not trained again
        assert (run / "ray" / trial_id / "result.json").read_text() == log


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; a preemption
def test_ctrl_c_or_sigterm_exports_what_ran_exits_130_and_resumes(tmp_path, signum):
    run = tmp_path / "c"
    proc = start_script(
        "tuning/run_grid.py",
        *SLOW_GRID,
        "--set",
        "trial.epochs=5",
        "--results-dir",
        str(tmp_path),
        "--name",
        "c",
    )
    wait_for(lambda: len(finished_trials(run / "ray")) >= 1 and len(list(run.glob("ray/*/"))) >= 2)
    os.kill(proc.pid, signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    statuses = {t["status"] for t in trials}
    assert "completed" in statuses and statuses <= {"completed", "interrupted"}, trials
    assert "interrupted" in statuses  # never early_stopped: no scheduler stopped them
    completed_before = sum(t["status"] == "completed" for t in trials)
    assert pq.read_table(run / "epochs.parquet").num_rows >= 5
    command = out.rsplit("continue with:\n", 1)[1].strip()
    assert command == (
        f"python {REPO}/tuning/run_grid.py --resume --name c --results-dir {tmp_path} "
        "--no-dashboard"
    )
    if signum == signal.SIGTERM:
        return  # the resume is the same after either signal: tested once, after Ctrl-C

    resumed = run_script(*shlex.split(command)[1:])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3
    assert pq.read_table(run / "epochs.parquet").num_rows == 15
    # The progress counts the trials that ended before the resume (a trial can end between
    # Ctrl-C and Tune saving its state, so as many as the export called completed, or fewer).
    ended_before = re.search(r"3/3 trials done \((\d) before this resume\)", resumed.stdout)
    assert ended_before and 1 <= int(ended_before[1]) <= completed_before, resumed.stdout
    assert "trials per node" not in resumed.stdout  # one machine, though Ray's node id changed


def test_an_exposed_dashboard_is_warned_about():
    from tuning.run.cli import dashboard_warning, parse_args

    assert dashboard_warning(parse_args([])) is None
    assert dashboard_warning(parse_args(["--dashboard-host", "0.0.0.0", "--no-dashboard"])) is None
    warning = dashboard_warning(parse_args(["--dashboard-host", "0.0.0.0"]))
    assert "0.0.0.0" in warning and "no authentication" in warning
    assert "ssh -L" in warning and "RAY_AUTH_MODE=token" in warning


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--resume"], "--resume needs the --name"),
        (["--resume", "--name", "nope"], "nothing to resume"),
        (["--resume", "--name", "x", "--set", "trial.lr=1"], "drop --config, --set"),
    ],
)
def test_resume_refuses_what_it_cannot_do(tmp_path, args, expected):
    proc = run_main("tuning/run_grid.py", "--results-dir", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr


def test_a_results_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    proc = run_main("tuning/run_grid.py", "--smoke", "--results-dir", str(tmp_path / "taken"))
    assert proc.returncode == 2 and "cannot create --results-dir" in proc.stderr
    assert (tmp_path / "taken").read_text() == "not a folder"


def dashboard_actors(url: str) -> list[dict]:
    """The live actors the dashboard's HTTP API lists (Ray's token auth is on by default)."""
    token_file = Path.home() / ".ray" / "auth_token"
    token = os.environ.get("RAY_AUTH_TOKEN") or (
        token_file.read_text().strip() if token_file.exists() else ""
    )
    request = urllib.request.Request(
        f"{url}/api/v0/actors?limit=200&detail=true",
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]["result"]


@pytest.mark.slow
def test_the_dashboard_lists_live_trials_by_id_and_hyperparameters(tmp_path):
    args = [arg for arg in SLOW_GRID if arg != "--no-dashboard"]
    proc = start_script(
        "tuning/run_grid.py",
        *args,
        "--set",
        "trial.epochs=5",
        "--no-report",
        "--results-dir",
        str(tmp_path),
        "--name",
        "d",
    )
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("Ray dashboard: "):
                url = line.split(": ", 1)[1].strip()
                break
        assert url and url.startswith("http://127.0.0.1:"), "no dashboard address printed"
        named: list[str] = []

        def trials_listed() -> bool:
            names = [
                a.get("repr_name") or "" for a in dashboard_actors(url) if a["state"] == "ALIVE"
            ]
            named[:] = [n for n in names if n.startswith("CifarTrainable(")]
            return len(named) >= 1

        wait_for(trials_listed)
        trial_ids = {p.name for p in (tmp_path / "d" / "ray").iterdir() if p.is_dir()}
        for name in named:
            assert name.split("(")[1].split(":")[0] in trial_ids
            assert "lr=0.00" in name and "seed=0" in name
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
