"""A run's lifecycle under bad luck and bad intent: killed, interrupted, concurrent and moved
runs, secrets, hostile checkpoint files, bad data, partial writes."""

import os
import pickle
import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import trainable.data as data_module
from tests.conftest import (
    REPO,
    local_trainable,
    make_image_folder,
    run_main,
    run_script,
    start_script,
    wait_for,
)
from trainable.checkpoint import CHECKPOINT_FILE, ForeignCheckpointFile, check_checkpoint_folder
from trainable.data import DataConfig, DataError, load_dataset, locate_dataset
from trainable.files import atomic_write
from trainable.trainable import SharedData
from tuning.config import ConfigError, ExperimentConfig
from tuning.results.tables import write_run
from tuning.results.tune_logs import trial_epochs
from tuning.run.folder import RunFolder, check_name

CLASSES = ["ant", "bee", "cat"]
TINY = {
    "data": {"source": "synthetic", "train_subset": 600, "val_size": 200, "test_subset": 200},
    "trial": {"hidden": 8, "epochs": 3, "batch_size": 100},
}
# A grid of three 3-epoch trials, one at a time, on the synthetic data.
SMALL_GRID = [
    "--smoke",
    "--no-dashboard",
    "--no-report",
    "--set",
    "search.grid.lr=[0.001, 0.002, 0.003]",
    "--set",
    "trial.epochs=3",
    "--set",
    "search.max_concurrent=1",
]


def tables(run: Path) -> tuple[list[dict], list[dict]]:
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    return epochs, pq.read_table(run / "trials.parquet").to_pylist()


def patched_driver(tmp_path: Path, patch: str) -> Path:
    """An entry script that runs `tuning.run.cli.main` after `patch` (Python) has run."""
    script = tmp_path / "driver.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        + textwrap.dedent(patch)
        + "\nfrom tuning.run import cli\nsys.exit(cli.main('configs/grid.yaml'))\n"
    )
    return script


# 0. A killed run resumes to its tables.


def test_progress_csv_rows_of_every_shape_are_read(tmp_path, caplog):
    # The header of the first session; after a restore, Tune appends rows under the keys of
    # its first new report, without a header: here the re-reported last epoch with test_acc
    # and test_loss (two more fields), in another order. A row cut off while written ends it.
    header = "epoch,val_acc,trial_id,done"
    (tmp_path / "progress.csv").write_text(
        f"{header}\n1,0.5,a_1,False\n2,0.6,a_1,False\n"
        "3,0.42,0.71,a_1,True,1.5\n"  # epoch, test_acc, val_acc, trial_id, done, test_loss
        "3,0.7"
    )
    (tmp_path / "result.json").write_text(
        '{"epoch": 1, "val_acc": 0.5, "trial_id": "a_1", "done": false}\n'
        '{"epoch": 3, "test_acc": 0.42, "val_acc": 0.71, "trial_id": "a_1", "done": true, '
        '"test_loss": 1.5, "config": {"lr": 0.1}}\n'
        '{"epoch": 3, "val_ac'  # a partial last line: the driver died writing it
    )
    rows = trial_epochs(tmp_path)
    assert [(r["epoch"], r["val_acc"]) for r in rows] == [(1, 0.5), (2, 0.6), (3, 0.71)]
    assert rows[2]["test_acc"] == 0.42
    assert "skipped unreadable line 3" in caplog.text
    # Without result.json's rows, the restored row is read under its own report's keys.
    (tmp_path / "result.json").write_text(
        '{"epoch": 3, "test_acc": 0.42, "val_acc": 0.71, "trial_id": "a_1", "done": true, '
        '"test_loss": 1.5}\n'
    )
    from tuning.results.tune_logs import _progress_csv

    layout = [["epoch", "test_acc", "val_acc", "trial_id", "done", "test_loss"]]
    csv_rows = _progress_csv((tmp_path / "progress.csv").read_text(), layout)
    assert [(r["epoch"], r["val_acc"]) for r in csv_rows] == [(1, 0.5), (2, 0.6), (3, 0.71)]
    assert csv_rows[2]["test_acc"] == 0.42


KILL_AT_TRIAL_END = """
import os, signal
from ray import tune
import tuning.run.tuner

class KillAtTrialEnd(tune.Callback):
    # The first trial has reported its last epoch and Tune holds its final checkpoint, but
    # the experiment state still says RUNNING: the driver dies here, with its Ray.
    def on_trial_complete(self, iteration, trials, trial, **info):
        os.killpg(os.getpgid(0), signal.SIGKILL)

run_tuner = tuning.run.tuner.run_tuner
tuning.run.tuner.run_tuner = lambda *a, callbacks=(), **k: run_tuner(
    *a, callbacks=[*callbacks, KillAtTrialEnd()], **k
)
"""


@pytest.mark.slow
def test_a_driver_killed_between_a_final_checkpoint_and_the_trial_end_resumes(tmp_path):
    driver = patched_driver(tmp_path, KILL_AT_TRIAL_END)
    args = [*SMALL_GRID, "--results-dir", str(tmp_path), "--name", "k"]
    proc = start_script(str(driver), *args)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    run = tmp_path / "k"
    (first,) = [p for p in (run / "ray").glob("*/checkpoint_000002")]  # its 3rd, last epoch

    resumed = run_script(
        "tuning/run_grid.py",
        "--resume",
        "--name",
        "k",
        "--results-dir",
        str(tmp_path),
        "--no-dashboard",
        "--no-report",
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    epochs, trials = tables(run)
    assert [t["status"] for t in trials] == ["completed"] * 3
    for trial in trials:
        assert [e["epoch"] for e in epochs if e["trial_id"] == trial["trial_id"]] == [1, 2, 3]
        assert trial["test_acc"] is not None
    # Restored, the killed trial reported its last epoch again, test accuracy included: a row
    # longer than the header, which the export once failed on.
    lines = (first.parent / "progress.csv").read_text().splitlines()
    assert len(lines[-1].split(",")) > len(lines[0].split(","))


# 1. Ctrl-C tells the truth: in tests/test_cli.py (test_ctrl_c_...).


def test_a_trial_that_never_started_is_exported_as_interrupted(tmp_path):
    from tuning.results.tune_logs import build_tables

    class Result:  # what Tune's ResultGrid holds for a trial still pending: no config
        error, config, filesystem, path = None, None, None, str(tmp_path / "t_1")

    class Results(list):
        experiment_path, filesystem = str(tmp_path), None

    config = ExperimentConfig.model_validate(TINY)
    pending = {"t_1": {**config.trial.model_dump(), "lr": 0.01}}
    epochs, trials = build_tables(
        Results([Result()]), config, interrupted={"t_1"}, trial_configs=pending
    )
    (row,) = trials.to_pylist()
    assert (row["status"], row["lr"], row["epochs_completed"]) == ("interrupted", 0.01, 0)
    assert epochs.num_rows == 0


INTERRUPT_AT_FIRST_RESULT = """
import os, signal
from ray import tune
import tuning.run.tuner

class InterruptAtFirstResult(tune.Callback):
    # Ctrl-C while two trials run and the third waits, created but never started.
    sent = False

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not InterruptAtFirstResult.sent:
            InterruptAtFirstResult.sent = True
            os.kill(os.getpid(), signal.SIGINT)

run_tuner = tuning.run.tuner.run_tuner
tuning.run.tuner.run_tuner = lambda *a, callbacks=(), **k: run_tuner(
    *a, callbacks=[*callbacks, InterruptAtFirstResult()], **k
)
"""


@pytest.mark.slow
def test_a_run_interrupted_before_a_trial_started_resumes_quietly(tmp_path):
    driver = patched_driver(tmp_path, INTERRUPT_AT_FIRST_RESULT)
    run = tmp_path / "i"
    common = ["--results-dir", str(tmp_path), "--name", "i", "--no-dashboard", "--no-report"]
    grid = ["--smoke", "--set", "search.grid.lr=[0.001, 0.002, 0.003]", "--set", "trial.epochs=3"]
    first = run_script(str(driver), *grid, *common)
    assert first.returncode == 130, first.stdout[-2000:] + first.stderr[-3000:]
    _, trials = tables(run)
    assert any(t["status"] == "interrupted" and t["epochs_completed"] == 0 for t in trials)

    resumed = run_script("tuning/run_grid.py", "--resume", *common)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert [t["status"] for t in tables(run)[1]] == ["completed"] * 3
    # Tune's warning that it found no metrics for the trial that never started is not news.
    assert "Failed to fetch metrics" not in resumed.stderr, resumed.stderr


# 2. No tables lost to a late failure.

JUDGE_FAILS = """
import tuning.run.tuner

def judge_best(*args):
    raise OSError("checkpoint storage unreachable")

tuning.run.tuner.judge_best = judge_best
"""


@pytest.mark.slow
def test_a_failed_judgement_keeps_the_tables_and_exits_1(tmp_path):
    driver = patched_driver(tmp_path, JUDGE_FAILS.replace("grid", "optuna"))
    driver.write_text(driver.read_text().replace("configs/grid.yaml", "configs/optuna.yaml"))
    proc = run_script(
        str(driver), "--smoke", "--no-dashboard", "--results-dir", str(tmp_path), "--name", "j",
        "--set", "final.top_k=0",  # no finalists: the search's choice is judged alone
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "could not evaluate the chosen trial" in proc.stderr
    assert "checkpoint storage unreachable" in proc.stderr and "Traceback" not in proc.stderr
    epochs, trials = tables(tmp_path / "j")
    assert len(trials) == 2 and epochs and all(t["test_acc"] is None for t in trials)
    assert (tmp_path / "j" / "report.md").exists()


def test_a_report_without_epochs_says_so(tmp_path):
    from tuning.results.report import write_report

    config = ExperimentConfig.model_validate(TINY)
    trials = pa.Table.from_pylist(
        [
            {
                "trial_id": t,
                "status": "error",
                "lr": 0.1,
                "final_val_acc": None,
                "test_acc": None,
                "epochs_completed": 0,
            }
            for t in ("a", "b")
        ]
    )
    epochs = pa.table({"trial_id": pa.array([], pa.string()), "epoch": pa.array([], pa.int64())})
    write_run(tmp_path, epochs, trials, config, {})
    (written,) = write_report(tmp_path)
    text = written.read_text()
    assert "No trial completed an epoch (2 trials: 2 error)" in text and "| a | error |" in text


# 3. One process per run folder.


def test_a_locked_run_folder_is_refused_naming_its_holder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.yaml").write_text("name: x\n")
    holder = RunFolder.existing(tmp_path, "x")
    try:
        with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} on "):
            RunFolder.existing(tmp_path, "x")
        proc = run_main(
            "tuning/run_grid.py", "--resume", "--name", "x", "--results-dir", str(tmp_path)
        )
        assert proc.returncode == 2 and f"process {os.getpid()}" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        holder.close()
    RunFolder.existing(tmp_path, "x").close()  # free again once the holder is done


# 4. Resuming on other data is refused.


def test_resuming_on_other_data_is_refused(tmp_path):
    folder = RunFolder(tmp_path, resume=False)
    folder.check_data("aaa", "/data/one (imagefolder)")
    resumed = RunFolder(tmp_path, resume=True)
    resumed.check_data("aaa", "/data/moved (imagefolder)")  # moved, same data: fine
    with pytest.raises(ConfigError) as err:
        resumed.check_data("bbb", "/data/two (imagefolder)")
    assert "/data/one" in str(err.value) and "/data/two" in str(err.value)
    assert "aaa" in str(err.value) and "bbb" in str(err.value)


@pytest.mark.slow
def test_resume_with_another_data_dir_exits_2(tmp_path):
    one = make_image_folder(tmp_path / "one", CLASSES, per_class=20)
    # Too small for the run's split, too: the fingerprint is compared before that can fail.
    two = make_image_folder(tmp_path / "two", CLASSES, per_class=2)
    common = ["--no-dashboard", "--no-report", "--results-dir", str(tmp_path / "r"), "--name", "d"]
    first = run_script(
        "tuning/run_grid.py",
        "--smoke",
        "--data-dir",
        str(one),
        *common,
        "--set",
        "data.val_size=6",
        "--set",
        "data.cache_dir=" + str(tmp_path / "cache"),
    )
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_script("tuning/run_grid.py", "--resume", "--data-dir", str(two), *common)
    assert again.returncode == 2, again.stderr[-3000:]
    assert str(one) in again.stderr and str(two) in again.stderr and "other data" in again.stderr
    assert (tmp_path / "r" / "d" / "trials.parquet").exists()  # the run itself is kept


# 5. Secrets never stored or shown.

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "args",
    [
        ["--storage", f"s3://AKIAEXAMPLE:{SECRET}@bucket/runs"],
        ["--storage", f"s3://bucket/runs?region=eu&access_key=AKIA&secret_key={SECRET}"],
        ["--storage", f"gs://bucket/runs?session_token={SECRET}"],
        ["--set", f"run.storage=s3://bucket/runs?secret_key={SECRET}"],
    ],
)
def test_a_storage_uri_with_credentials_is_refused_unechoed(tmp_path, args):
    proc = run_main("tuning/run_grid.py", "--smoke", "--results-dir", str(tmp_path), *args)
    assert proc.returncode == 2 and "carries credentials" in proc.stderr
    assert "AWS_ACCESS_KEY_ID" in proc.stderr  # where credentials go instead
    assert SECRET not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ray_token_is_never_printed(monkeypatch, capsys):
    from tuning.run.cli import refuse

    monkeypatch.setenv("RAY_AUTH_TOKEN", SECRET)
    refuse(f"cannot join the Ray cluster at 10.0.0.1:6379: token {SECRET} was refused")
    err = capsys.readouterr().err
    assert SECRET not in err and "cannot join the Ray cluster" in err


def test_a_local_ray_without_token_authentication_is_warned_about(monkeypatch):
    from tuning.run.cli import auth_warning, parse_args

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    assert auth_warning(parse_args([])) is None
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert "RAY_AUTH_MODE=disabled" in auth_warning(parse_args([]))
    assert auth_warning(parse_args(["--address", "10.0.0.1:6379"])) is None  # not ours


# 6. Restoring from a checkpoint folder holding foreign files is refused.


class Payload:
    marker = ""

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_a_checkpoint_folder_with_a_foreign_file_is_not_restored(ray_session, tmp_path):
    config = ExperimentConfig.model_validate(TINY)
    shared = SharedData(ray_session.put(load_dataset(config.data)))

    Local = local_trainable(shared, tmp_path)

    checkpoint = tmp_path / "checkpoint_000000"
    checkpoint.mkdir()
    trial = Local(config.trial.model_dump())
    trial.step()
    trial.save_checkpoint(str(checkpoint))
    check_checkpoint_folder(str(checkpoint))  # what the project writes passes
    Local(config.trial.model_dump()).restore(str(checkpoint))

    payload = Payload()
    payload.marker = str(tmp_path / "pwned")
    with open(checkpoint / "_dict_checkpoint.pkl", "wb") as f:  # Ray unpickles this name
        pickle.dump({"x": payload}, f)
    with pytest.raises(ForeignCheckpointFile, match="_dict_checkpoint.pkl"):
        Local(config.trial.model_dump()).restore(str(checkpoint))
    assert not (tmp_path / "pwned").exists()
    assert (checkpoint / CHECKPOINT_FILE).exists()


# 7. Run names are names.


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "../up", "a/b", "a#b", "a?x=1", ".", "..", ""])
def test_a_name_that_is_not_a_name_is_refused(tmp_path, name):
    with pytest.raises(ConfigError, match="must be letters, digits"):
        check_name(name)
    results = tmp_path / "results"
    proc = run_main(
        "tuning/run_grid.py", "--smoke", "--results-dir", str(results), "--name", name, timeout=120
    )
    assert proc.returncode == 2 and "--name" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
    assert check_name("grid-2026.11_a") == "grid-2026.11_a"


# 8. Bad data is a clear error; a failed start leaves nothing behind.


def broken(root: Path, kind: str) -> Path:
    """Spoil one image of `root` the way `kind` says; return its path."""
    bad = root / "train" / "bee" / "0001.png"
    bad.unlink()
    if kind == "empty":
        bad.write_bytes(b"")
    elif kind == "folder":
        bad.mkdir()
    elif kind == "broken symlink":
        bad.symlink_to(root / "nowhere.png")
    elif kind == "symlink loop":
        bad.symlink_to(bad)
    return bad


@pytest.mark.parametrize("kind", ["empty", "folder", "broken symlink", "symlink loop"])
def test_a_bad_image_file_is_named(tmp_path, kind):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3)
    bad = broken(root, kind)
    with pytest.raises(DataError, match=str(bad)):
        load_dataset(DataConfig(dir=str(root), cache_dir=str(tmp_path / "cache"), val_size=3))


def test_an_unreadable_image_is_named(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3)
    bad = root / "train" / "bee" / "0001.png"
    read_bytes = Path.read_bytes

    def refuse(path):  # as chmod 000 would, for a user other than root
        if path == bad:
            raise PermissionError(13, "Permission denied")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=f"cannot read image {bad} \\(Permission denied\\)"):
        load_dataset(DataConfig(dir=str(root), cache_dir=str(tmp_path / "cache"), val_size=3))


def test_a_data_dir_that_loops_through_symlinks_is_refused(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(DataError, match="loop"):
        locate_dataset(DataConfig(dir=str(tmp_path / "loop")))
    proc = run_main(
        "tuning/run_grid.py",
        "--data-dir",
        str(tmp_path / "loop"),
        "--results-dir",
        str(tmp_path / "results"),
        timeout=120,
    )
    assert proc.returncode == 2 and "cannot be resolved" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "results").exists()


def test_bad_data_exits_2_naming_the_file_and_writes_nothing(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3)
    bad = broken(root, "empty")
    results = tmp_path / "results"
    proc = run_main(
        "tuning/run_grid.py",
        "--smoke",
        "--data-dir",
        str(root),
        "--results-dir",
        str(results),
        "--name",
        "b",
        timeout=120,
    )
    assert proc.returncode == 2 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not results.exists() or list(results.iterdir()) == []


@pytest.mark.parametrize("ext", [".bmp", ".tif", ".tiff", ".gif", ".webp"])
def test_every_accepted_suffix_decodes(tmp_path, ext):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=4, ext=ext)
    data = load_dataset(DataConfig(dir=str(root), cache_dir=str(tmp_path / "c"), val_size=3))
    assert data.train_x.shape == (9, 3, 8, 8)
    # Class k was drawn as grey level 40·k plus noise below 20 (lossless formats).
    assert np.array_equal(data.test_x.reshape(len(data.test_x), -1).min(1) // 40, data.test_y)


RAY_WONT_START = """
import tuning.run.cluster

def start_ray(*args, **kwargs):
    raise RuntimeError("Ray could not start: no space left for its session folder")

tuning.run.cluster.start_ray = start_ray
"""


@pytest.mark.slow
def test_a_start_that_fails_removes_the_run_folder(tmp_path):
    driver = patched_driver(tmp_path, RAY_WONT_START)
    results = tmp_path / "results"
    proc = run_script(str(driver), "--smoke", "--results-dir", str(results), "--name", "f")
    assert proc.returncode == 1 and "Ray could not start" in proc.stderr
    assert list(results.iterdir()) == []  # the name can be used again


# 9. Durable writes.


def test_atomic_writes_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    calls = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append("rename") or replace(a, b))
    atomic_write(tmp_path / "t.txt", lambda path: path.write_text("x"))
    assert calls[:2] == ["fsync", "rename"] and (tmp_path / "t.txt").read_text() == "x"


def test_a_full_disk_during_the_cache_write_leaves_no_partial_files(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3)
    save = np.save
    saved = []

    def save_until_full(path, array):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(path)
        save(path, array)

    monkeypatch.setattr(data_module.np, "save", save_until_full)
    cache = tmp_path / "cache"
    data = load_dataset(DataConfig(dir=str(root), cache_dir=str(cache), val_size=3))
    assert len(data.train_y) == 6 and saved  # the run goes on without a cache
    assert list(cache.iterdir()) == []


def test_a_damaged_cache_is_decoded_again(tmp_path, caplog):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3)
    spec = DataConfig(dir=str(root), cache_dir=str(tmp_path / "cache"), val_size=3)
    first = load_dataset(spec)
    (cached,) = (tmp_path / "cache").iterdir()
    (cached / "train_x.npy").write_bytes(b"\x93NUMPY")  # cut short, as by a power cut
    again = load_dataset(spec)
    assert np.array_equal(again.train_x, first.train_x)
    assert "unreadable" in caplog.text


def test_a_moved_run_folder_resumes_against_its_own_study(tmp_path):
    import optuna

    from tuning.run.tuner import restoring_study
    from tuning.search.plan import build_plan
    from tuning.search.searcher import StudySearcher
    from tuning.search.study import STUDY_FILE, study_url

    config = ExperimentConfig.model_validate(
        {**TINY, "search": {"kind": "optuna", "space": {"lr": {"loguniform": [1e-4, 1e-1]}}}}
    )
    before, after = tmp_path / "before" / "o", tmp_path / "after" / "o"
    before.mkdir(parents=True)
    plan = build_plan(config, before)
    searcher = plan.search_alg
    searcher.set_search_properties("val_acc", "max", plan.param_space)
    searcher.suggest("t1")
    searcher.save(str(before / "searcher-state.pkl"))  # as Tune saves it in the run folder
    after.parent.mkdir()
    shutil.move(before, after)

    restored = StudySearcher.__new__(StudySearcher)  # as Tune unpickles it, then restores
    with restoring_study(after / STUDY_FILE):
        restored.restore(str(after / "searcher-state.pkl"))
    restored.suggest("t2")
    study = optuna.load_study(study_name="o", storage=study_url(after))
    assert [t.user_attrs["tune_trial_id"] for t in study.trials] == ["t1", "t2"]
    assert not before.exists()


def test_a_partial_result_json_line_does_not_stop_the_export(tmp_path, caplog):
    (tmp_path / "result.json").write_text('{"epoch": 1, "val_acc": 0.5}\n{"epoch": 2, "val_a')
    rows = trial_epochs(tmp_path)
    assert [r["epoch"] for r in rows] == [1]
    assert "skipped unreadable line 2" in caplog.text


# The whole lifecycle from the command line.


@pytest.mark.slow
def test_a_second_resume_while_the_first_runs_is_refused(tmp_path):
    args = [*SMALL_GRID, "--results-dir", str(tmp_path), "--name", "l"]
    first = start_script("tuning/run_grid.py", *args)
    try:
        lock = tmp_path / "l" / ".lock"
        wait_for(lambda: lock.exists() and lock.read_text())
        second = run_script(
            "tuning/run_grid.py",
            "--resume",
            "--name",
            "l",
            "--results-dir",
            str(tmp_path),
            "--no-dashboard",
        )
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"in use by process {first.pid} on" in second.stderr
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0
    _, trials = tables(tmp_path / "l")
    assert [t["status"] for t in trials] == ["completed"] * 3
