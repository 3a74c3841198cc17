"""The entry scripts on a two-node Ray cluster simulated on this machine, one CPU per node.

The nodes are `ray start --block` processes with temp dirs of their own, so they neither join
nor disturb the test session's Ray (or any other Ray on the machine); the tests talk to them
only through the entry scripts' `--address`, as a user would.
"""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import (
    SLOW_GRID,
    finished_trials,
    kill_when,
    make_image_folder,
    run_script,
    start_script,
)


def by_lr(run: Path) -> dict[float, dict]:
    return {row["lr"]: row for row in pq.read_table(run / "trials.parquet").to_pylist()}


@pytest.mark.slow
def test_a_grid_spreads_over_both_nodes_and_matches_a_local_run(cluster, tmp_path):
    data = make_image_folder(tmp_path / "images", ["a", "b", "c", "d"], per_class=50)
    args = [
        "--data-dir",
        str(data),
        "--set",
        f"data.cache_dir={tmp_path / 'cache'}",
        "--set",
        "data.val_size=40",
        "--set",
        "trial.epochs=2",
        "--set",
        "trial.hidden=16",
        "--set",
        'search.grid={"lr": [0.001, 0.01], "seed": [0]}',
        "--no-report",
        "--results-dir",
        str(tmp_path),
    ]
    joined = run_script(
        "tuning/run_grid.py", *args, "--name", "c", "--address", cluster.address, env=cluster.auth
    )
    assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
    assert f"joined the Ray cluster at {cluster.address}: 2 nodes, 2 CPUs" in joined.stdout
    local = run_script("tuning/run_grid.py", *args, "--name", "l", "--no-dashboard")
    assert local.returncode == 0, local.stderr[-3000:]

    on_cluster, on_one = by_lr(tmp_path / "c"), by_lr(tmp_path / "l")
    assert len({row["node_id"] for row in on_cluster.values()}) == 2  # one trial per node
    assert "trials per node: " in joined.stdout
    assert {row["device"] for row in on_cluster.values()} == {"cpu"}
    assert all(row["hostname"] for row in on_cluster.values())
    assert len({row["node_id"] for row in on_one.values()}) == 1
    assert {row["node_id"] for row in on_one.values()}.isdisjoint(
        row["node_id"] for row in on_cluster.values()
    )
    # The same seeds give the same training wherever it runs.
    for lr, row in on_one.items():
        assert row["status"] == on_cluster[lr]["status"] == "completed"
        for metric in ("test_acc", "final_val_acc", "best_val_acc"):
            assert on_cluster[lr][metric] == row[metric]
    columns = ["lr", "epoch", "train_loss", "val_loss"]
    rows = {
        name: sorted(
            tuple(r[c] for c in columns)
            for r in pq.read_table(tmp_path / name / "epochs.parquet").to_pylist()
        )
        for name in ("c", "l")
    }
    assert len(rows["c"]) == 4 and rows["c"] == rows["l"]


@pytest.mark.slow
def test_a_run_on_the_cluster_resumes_from_its_storage_after_the_driver_dies(cluster, tmp_path):
    store = tmp_path / "store"
    tune_dir = store / "r" / "ray"
    args = ["--results-dir", str(tmp_path / "results"), "--name", "r", "--address", cluster.address]
    proc = start_script(
        "tuning/run_grid.py",
        *SLOW_GRID,
        "--set",
        "trial.epochs=5",
        "--storage",
        f"file://{store}",  # a URI: Tune and the export go through pyarrow, as for s3://
        "--no-report",
        *args,
        env=cluster.auth,
    )
    kill_when(  # the driver only: the cluster's nodes live on
        proc, lambda: len(finished_trials(tune_dir)) >= 1 and len(list(tune_dir.glob("*_*"))) >= 2
    )
    done = {p.name: (p / "result.json").read_text() for p in finished_trials(tune_dir)}
    run = tmp_path / "results" / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["storage"] == f"file://{store}"

    resumed = run_script("tuning/run_grid.py", *args, "--resume", "--no-report", env=cluster.auth)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert [t["status"] for t in trials] == ["completed"] * 3
    assert all(t["node_id"] and t["hostname"] for t in trials)
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    for trial in trials:
        assert [e["epoch"] for e in epochs if e["trial_id"] == trial["trial_id"]] == [1, 2, 3, 4, 5]
    for trial_id, log in done.items():  # finished before the kill: not trained again
        assert (tune_dir / trial_id / "result.json").read_text() == log
    assert not (run / "ray").exists()  # Tune's state is in the storage, the tables in the run
