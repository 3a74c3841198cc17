"""The benchmark's own measuring instruments: FLOP count and process-tree memory."""

import subprocess
import sys
import time

import pytest
import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from bench import report  # noqa: E402
from hardware import batch_matmuls_s, mlp_training_flops  # noqa: E402
from process_memory import TreeMemory  # noqa: E402


def test_the_floor_counts_the_flops_torch_runs_for_forward_and_backward():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), labels).backward()
    assert counter.get_total_flops() == 64 * mlp_training_flops(3072, 128, 10)


def test_the_matmuls_timed_alone_are_the_first_layers_share_of_the_training_flops():
    with FlopCounterMode(display=False) as counter:
        batch_matmuls_s(batches=3, batch=64, inputs=3072, hidden=128)
    second_layer = 3 * 2 * 128 * 10  # its forward, weight and input gradients, per sample
    per_batch = 64 * (mlp_training_flops(3072, 128, 10) - second_layer)
    assert counter.get_total_flops() == (3 + 1) * per_batch  # 3 timed batches and a warm-up


def test_tree_memory_sees_a_childs_allocation_and_names_it_a_trial():
    # A child that holds 200 MiB of its own, with a trial marker in its command line.
    code = "import time; x = bytearray(200 * 2**20); print('ready', flush=True); time.sleep(30)"
    child = subprocess.Popen(
        ["bash", "-c", f'exec -a "ray::FakeTrainable" {sys.executable} -c "{code}"'],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        memory = TreeMemory(child.pid, ("Trainable",), interval=0.1)
        memory.start()
        time.sleep(0.5)
        peaks = memory.stop()
    finally:
        child.kill()
        child.wait()
    assert peaks["most_concurrent_trials"] == 1
    assert peaks["peak_trial_uss_mib"] >= 200
    assert peaks["peak_total_mib"] >= peaks["peak_trial_pss_mib"] >= 200


def test_the_report_states_each_ratio_the_issue_asks_for():
    spans = {"a": [5.0, 25.0], "b": [6.0, 26.0], "c": [25.5, 40.0]}  # covered 5..40 = 35 s
    results = {
        "machine": {"date": "d", "cpu": "c", "cores": 2, "torch": "t", "ray": "r"},
        "data_mib": 176,
        "train_images": 45000,
        "bare_mib": 360,
        "bench_s": 270.0,
        "hardware": {
            "threads": 2,
            "matmul_gflops": 100.0,
            "training_flops_per_sample": 1_000_000,
            "floor_epoch_s": 0.5,
            "matmuls_epoch_s": 0.6,
            "optimizer_epoch_s": 0.15,
        },
        "epoch": {"ours_s": 1.0, "original_s": 8.0, "floor_ratio": 2.1},
        "grid": {
            "wall_s": 60.0,
            "trial_train_s": 48.0,
            "trials": 3,
            "timings_s": {
                "data_load": 1.0,
                "ray_start": 4.0,
                "data_to_object_store": 0.2,
                "trials": 45.0,
                "ray_shutdown": 1.0,
                "export": 0.3,
                "training_spans": spans,
            },
            "peak_total_mib": 2000,
            "peak_trial_pss_mib": 500,
            "peak_trial_uss_mib": 400,
            "most_concurrent_trials": 2,
        },
        "tutorial": {
            "wall_s": 240.0,
            "peak_total_mib": 2600,
            "peak_trial_pss_mib": 800,
            "peak_trial_uss_mib": 700,
        },
    }
    text = report(results)
    assert "8.0x faster" in text  # original 8 s / ours 1 s
    # The ratio measured side by side, not the one the medians would give (1 s / 0.5 s).
    assert "ours takes 2.10x the floor" in text
    assert "its matmuls alone" in text and "1.20x the floor" in text  # 0.6 / 0.5
    assert "the rest of ours" in text and "0.25 s" in text  # 1 - 0.6 - 0.15
    assert " 40 MiB" in text  # a trial's own 400 - bare 360
    assert "340 beyond a bare process" in text  # the tutorial trial's own 700 - 360
    assert "took 4.5 min" in text
    assert "0.25x the tutorial way's time" in text  # 60 / 240
    assert "grid wall / that = 1.25" in text  # 60 / 48
    assert "first trials' start" in text and " 5.0 s" in text  # the first span began at 5 s
    assert "Tune between and after" in text and " 5.0 s" in text  # 45 - 35 - 5
    assert "Python start and imports" in text and "8.5 s" in text  # 60 - 51.5 in the phases
    # 45000 images x 5 epochs x 3 trials / 35 s covered = 19,286 img/s; floor 100,000 img/s.
    assert "19,286 img/s" in text and "5.19x away" in text


def test_the_search_benchmark_takes_each_seeds_best_full_budget_value_by_then():
    from search_efficiency import curve, summarise

    points = [
        {"t": 50.0, "val_acc": 0.5},
        {"t": 120.0, "val_acc": 0.45},
        {"t": 200, "val_acc": 0.6},
    ]
    assert curve(points, [40, 50, 150, 250]) == [None, 0.5, 0.5, 0.6]
    runs = [
        {"method": "default", "seed": 0, "points": points, "test_acc": 0.59, "wall_s": 200},
        {
            "method": "default",
            "seed": 1,
            "points": [*points[:2], {"t": 225, "val_acc": 0.56}],
            "test_acc": 0.49,
            "wall_s": 230,
        },
        {"method": "random", "seed": 0, "points": [], "test_acc": None, "wall_s": 210},
    ]
    summary = summarise(runs)  # each run's best by its end, the longest run's included
    assert summary["default"]["final_val_mean"] == pytest.approx(0.58)
    assert summary["default"]["test_mean"] == pytest.approx(0.54)
    assert summary["default"]["full_budget_trials"] == 3
    assert summary["random"]["final_val_mean"] is None  # no trial trained the full budget


def test_the_search_benchmarks_curve_table_gives_each_methods_spread_by_each_time():
    from search_efficiency import curve_table

    runs = [
        {"method": "default", "points": [{"t": 40, "val_acc": 0.5}], "wall_s": 120},
        {"method": "default", "points": [{"t": 60, "val_acc": 0.54}], "wall_s": 110},
        {"method": "random", "points": [], "wall_s": 115},
    ]
    rows = curve_table(runs, step_s=50).splitlines()
    assert rows[0] == "| s | default | random |"
    assert rows[2] == "| 50 | — | — |"  # one default seed has no full-budget trial yet
    assert rows[3] == "| 100 | 0.5200 (0.5000–0.5400) | — |"
    assert rows[-1].startswith("| 120 | 0.5200")  # the longest run's end closes the table


def test_the_search_benchmarks_wide_space_reaches_every_method_as_one_set_item():
    from search_efficiency import SPACES, common_overrides

    from tuning.config import load_config

    overrides = common_overrides(200, 1, "wide")
    config = load_config(REPO / "configs" / "optuna.yaml", overrides)
    shipped = load_config(REPO / "configs" / "optuna.yaml", [])
    wide_space = yaml.safe_load(SPACES["wide"].read_text())
    assert set(config.search.space) == set(wide_space)
    assert len(wide_space) > len(shipped.search.space)
    assert config.search.space["augment"].choice == ["none", "flip", "crop_flip"]
    assert config.search.space["lr"].loguniform == (1e-5, 0.1)
    assert config.search.seed == 1 and config.final.top_k == 0
    assert common_overrides(200, 1, "shipped") == overrides[:-1]  # the config's own space
