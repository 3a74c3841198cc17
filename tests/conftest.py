"""Shared fixtures and helpers: one Ray per test session, a two-node Ray cluster per module that
asks for it, tiny configs and image-folder trees made on the spot, entry scripts run and killed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tuning.config import ExperimentConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU Ray without dashboard, started once; Tuners must not start their own."""
    import ray

    os.environ["TUNE_DISABLE_AUTO_INIT"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def finished_trials(tune_dir: Path, epochs: int = 5) -> list[Path]:
    """Trial folders in the Tune folder `tune_dir` whose result.json reached epoch `epochs`."""
    return [
        log.parent
        for log in tune_dir.glob("*/result.json")
        if any(json.loads(line).get("epoch") == epochs for line in log.read_text().splitlines())
    ]


def local_trainable(data, log_dir: Path) -> type:
    """`CifarTrainable` outside Tune, built from a trial config alone: its data the `SharedData`
    `data`, its log folder `log_dir`. Defined in a function, Ray ships it to an actor by value."""
    from trainable.trainable import CifarTrainable

    class Local(CifarTrainable):
        def _setup_logdir(self):
            self._logdir = str(log_dir)

        def setup(self, trial_config):
            super().setup(trial_config, data=data)

    return Local


def continued_epoch(first, data, other_seed: int = 7) -> tuple[dict, dict]:
    """The epoch `first` (a `Training` on `data`) trains next, and the same epoch trained by a
    fresh `Training` of another seed restored from `first`'s checkpoint, as a trainable does."""
    import torch

    from trainable.checkpoint import restore_training, training_state
    from trainable.loop import Training

    saved = io.BytesIO()
    torch.save(training_state(first), saved)
    expected = first.train_epoch()
    trial = first.trial.model_copy(update={"seed": other_seed})
    second = Training(trial, data, first.device)
    saved.seek(0)
    restore_training(second, torch.load(saved, map_location=first.device, weights_only=True))
    return expected, second.train_epoch()


def make_image_folder(
    root: Path, classes: list[str], per_class: int, size: tuple[int, int] = (8, 8), ext=".png"
) -> Path:
    """`root/train/<class>/*` and `root/test/<class>/*`: each class a different solid colour."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("test", max(1, per_class // 2))):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.full((size[1], size[0], 3), 40 * label, dtype=np.int16)
                pixels = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}{ext}")
    return root


@contextlib.contextmanager
def importable_module(folder: Path, monkeypatch, name: str, text: str):
    """`name`.py holding `text` in `folder`, first on sys.path, as the working directory would
    be; forgotten by Python's import cache before and after."""
    (folder / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(name, None)
    try:
        yield folder
    finally:
        sys.modules.pop(name, None)


def script_command(script: str, *args: str, env: dict | None = None) -> dict:
    """Arguments for subprocess to run an entry script as a user would, with its own Ray;
    `env` adds to the environment."""
    # The script must start its own Ray, not join the test session's.
    drop = ("RAY_ADDRESS", "TUNE_DISABLE_AUTO_INIT")
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}
    return {"args": [sys.executable, str(REPO / script), *args], "env": env, "cwd": REPO}


def run_script(
    script: str, *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run an entry script to its end, capturing its output."""
    return subprocess.run(
        **script_command(script, *args, env=env), capture_output=True, text=True, timeout=timeout
    )


def run_main(script: str, *args: str, env: dict | None = None, timeout: float | None = None):
    """An entry script's `main` in this process, for input it refuses before Ray starts: its
    exit status and output as `run_script` gives them (an exception fails the test)."""
    from tuning.run.cli import main

    default = {
        "tuning/run_grid.py": "configs/grid.yaml",
        "tuning/run_optuna.py": "configs/optuna.yaml",
    }
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(default[script], list(args))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())


def start_script(script: str, *args: str, env: dict | None = None) -> subprocess.Popen:
    """Start an entry script in a process group of its own, so a test can kill it and its Ray."""
    return subprocess.Popen(
        **script_command(script, *args, env=env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run to progress"
        time.sleep(0.5)


def kill_when(proc: subprocess.Popen, condition, timeout: float = 240) -> None:
    """SIGKILL the process group `start_script` gave `proc` (no goodbye) once `condition()`
    holds, or when the wait for it fails."""
    try:
        wait_for(condition, timeout)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Three trials of 5 epochs, one at a time, slow enough (~1 s an epoch) to be killed mid-run.
SLOW_GRID = [
    "--smoke",
    "--no-dashboard",
    "--set",
    "search.grid.lr=[0.001, 0.002, 0.003]",
    "--set",
    "trial.hidden=1024",
    "--set",
    "data.train_subset=4000",
    "--set",
    "search.max_concurrent=1",
]


TINY_DATA = {"source": "synthetic", "train_subset": 600, "val_size": 200, "test_subset": 200}


def tiny_config(**sections) -> ExperimentConfig:
    raw = {"data": TINY_DATA, "trial": {"hidden": 8, "epochs": 3, "batch_size": 100}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return ExperimentConfig.model_validate(raw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def start_node(*args: str, temp_dir: str, auth: dict[str, str]) -> subprocess.Popen:
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
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **auth}
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


@dataclass(frozen=True)
class Cluster:
    address: str
    auth: dict[str, str]  # the environment a driver needs to join it


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """A head node and a worker node, each with one CPU and no dashboard: `ray start --block`
    processes with temp dirs of their own, so they neither join nor disturb the test session's
    Ray; a module's tests talk to them through the entry scripts' `--address`."""
    import ray.util

    # Token authentication, with a token made for this cluster: nothing read from or left in
    # ~/.ray. (Made here, not at import: pytest imports this file as `conftest` and the tests
    # as `tests.conftest`, two modules with two tokens.)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

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
                auth=auth,
            )
        )
        nodes.append(start_node(f"--address={address}", temp_dir=temp[1], auth=auth))
        yield Cluster(address, auth)
    finally:
        for node in reversed(nodes):
            stop_node(node)
        for folder in temp:
            shutil.rmtree(folder, ignore_errors=True)
            Path(f"{folder}.log").unlink(missing_ok=True)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """A test that starts Ray is `slow`, whether or not it says so; `gpu` tests need CUDA:
    skipped, with the reason shown, where there is none."""
    import torch

    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
