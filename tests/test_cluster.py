"""The entry scripts on a two-node Ray cluster simulated on this machine, one CPU per node.

The nodes are `ray start --block` processes with temp dirs of their own, so they neither join
nor disturb the test session's Ray (or any other Ray on the machine); the tests talk to them
only through the entry scripts' `--address`, as a user would.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray.util
import yaml

from tests.conftest import (
    finished_trials,
    kill_when,
    make_image_folder,
    run_script,
    start_script,
)
from tests.test_cli import SLOW_GRID

# Token authentication, with a token made for this cluster: nothing read from or left in ~/.ray.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_node(*args: str, temp_dir: str) -> subprocess.Popen:
    """One node in a process group of its own; returns once Ray says it has started."""
    log = Path(f"{temp_dir}.log")
    command = [
        "ray",
        "start",
        "--block",
        "--num-cpus=1",
        f"--temp-dir={temp_dir}",
        f"--dashboard-agent-listen-port={free_port()}",  # the default port is one per machine
        "--disable-usage-stats",
        *args,
    ]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **AUTH}
    with log.open("w") as out:
        node = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert node.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    return node


def stop_node(node: subprocess.Popen) -> None:
    os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)  # raylet, GCS and workers share its group
        node.wait()


@pytest.fixture(scope="module")
def cluster():
    """The address of a head node and a worker node, each with one CPU and no dashboard."""
    # Short paths: Ray's Unix sockets live under the temp dir and allow ~100 characters.
    temp = [tempfile.mkdtemp(prefix=f"rt{role}", dir="/tmp") for role in "hw"]
    address = f"{ray.util.get_node_ip_address()}:{free_port()}"
    nodes = []
    try:
        nodes.append(
            start_node(
                "--head",
                f"--port={address.rsplit(':', 1)[1]}",
                "--include-dashboard=false",
                f"--ray-client-server-port={free_port()}",
                temp_dir=temp[0],
            )
        )
        nodes.append(start_node(f"--address={address}", temp_dir=temp[1]))
        yield address
    finally:
        for node in reversed(nodes):
            stop_node(node)
        for folder in temp:
            shutil.rmtree(folder, ignore_errors=True)
            Path(f"{folder}.log").unlink(missing_ok=True)


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
    joined = run_script("tuning/run_grid.py", *args, "--name", "c", "--address", cluster, env=AUTH)
    assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
    assert f"joined the Ray cluster at {cluster}: 2 nodes, 2 CPUs" in joined.stdout
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
    args = ["--results-dir", str(tmp_path / "results"), "--name", "r", "--address", cluster]
    proc = start_script(
        "tuning/run_grid.py",
        *SLOW_GRID,
        "--set",
        "trial.epochs=5",
        "--storage",
        f"file://{store}",  # a URI: Tune and the export go through pyarrow, as for s3://
        "--no-report",
        *args,
        env=AUTH,
    )
    kill_when(  # the driver only: the cluster's nodes live on
        proc, lambda: len(finished_trials(tune_dir)) >= 1 and len(list(tune_dir.glob("*_*"))) >= 2
    )
    done = {p.name: (p / "result.json").read_text() for p in finished_trials(tune_dir)}
    run = tmp_path / "results" / "r"
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["storage"] == f"file://{store}"

    resumed = run_script("tuning/run_grid.py", *args, "--resume", "--no-report", env=AUTH)
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
