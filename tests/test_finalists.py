"""Finalists: the search's best configurations re-run over fresh seeds, through Ray, and resumed."""

import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    REPO,
    TINY_DATA,
    finished_trials,
    kill_when,
    run_script,
    start_script,
)
from trainable.data import load_dataset
from tuning.config import ConfigError, ExperimentConfig, load_config, smoke_overrides
from tuning.results.groups import final_groups, grid_groups, verdict_lines
from tuning.results.tune_logs import build_tables, final_table
from tuning.run.finalists import FINAL_FOLDER, finalise, select_finalists
from tuning.run.tuner import run_tuner, share_data
from tuning.search.plan import build_plan


def tiny(**sections) -> ExperimentConfig:
    raw = {
        "data": TINY_DATA,
        "trial": {"hidden": 8, "epochs": 3, "batch_size": 100},
        "search": {
            "kind": "optuna",
            "num_samples": 6,
            "space": {"lr": {"loguniform": [1e-4, 3e-2]}, "hidden": {"choice": [4, 8, 16]}},
        },
        "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2},
        "final": {"top_k": 2, "seeds": 3},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return ExperimentConfig.model_validate(raw)


def test_final_defaults_and_validation():
    assert tiny(final={"top_k": None}).final.top_k == 3  # a search: three finalists
    grid = ExperimentConfig.model_validate({"search": {"grid": {"lr": [0.1, 0.01]}}})
    assert grid.final.top_k == 0  # a grid's seeds are its replicates
    with pytest.raises(ValueError, match="a grid's seeds are its replicates"):
        ExperimentConfig.model_validate({"final": {"top_k": 2}})
    with pytest.raises(ConfigError, match="final.seeds"):
        load_config(REPO / "configs/optuna.yaml", ["final.seeds=0"])
    assert load_config(REPO / "configs/optuna.yaml", ["final.top_k=0"]).final.top_k == 0


@pytest.mark.slow
def test_finalists_rerun_the_best_configurations_over_fresh_seeds(ray_session, tmp_path):
    # The search trains 3 epochs, the finalists 4, each warming up for half of the run.
    config = tiny(final={"epochs": 4}, trial={"warmup": 1.5})
    data = load_dataset(config.data)
    shared = share_data(data)
    results = run_tuner(config, shared, tmp_path, build_plan(config, tmp_path))
    epochs, trials = build_tables(results, config)
    rows = trials.to_pylist()
    completed = [r for r in rows if r["status"] == "completed"]
    assert len(completed) >= 2 and any(r["status"] == "early_stopped" for r in rows)

    finalists = select_finalists(results, config)
    # The two best by val_acc at their last epoch among trials that ran all 3 epochs.
    by_value = sorted(completed, key=lambda r: -r["final_val_acc"])
    assert [f.trial_id for f in finalists] == [r["trial_id"] for r in by_value[:2]]
    assert [f.rank for f in finalists] == [1, 2]
    assert {(f.config["epochs"], f.config["warmup"]) for f in finalists} == {(4, 2.0)}

    chosen, final_results = finalise(config, shared, tmp_path, results)
    assert chosen == finalists
    assert (tmp_path / FINAL_FOLDER).is_dir()
    final = final_table(final_results, finalists, config).to_pylist()
    assert len(final) == 6
    assert {r["status"] for r in final} == {"completed"}
    assert {r["epochs_completed"] for r in final} == {4}  # their budget, none stopped early
    assert all(r["test_acc"] is not None and r["val_loss"] is not None for r in final)
    for finalist in finalists:
        mine = [r for r in final if r["finalist"] == finalist.rank]
        base = finalist.config["seed"]
        assert [r["seed"] for r in mine] == [base + 1, base + 2, base + 3]  # fresh seeds
        assert {r["lr"] for r in mine} == {finalist.config["lr"]}
        assert {r["search_trial_id"] for r in mine} == {finalist.trial_id}

    groups = final_groups(final_table(final_results, finalists, config), config)
    assert [g["n"] for g in groups] == [3, 3] and sorted(g["finalist"] for g in groups) == [1, 2]
    best = groups[0]
    means = {
        f: sum(r["val_acc"] for r in final if r["finalist"] == f) / 3 for f in (1, 2)
    }  # the winner: the best mean validation accuracy over its re-runs
    assert best["finalist"] == max(means, key=means.get)
    assert best["val_acc_mean"] == pytest.approx(means[best["finalist"]])
    assert best["test_acc_ci_low"] <= best["test_acc_mean"] <= best["test_acc_ci_high"]
    assert groups[1]["test_acc_p_vs_best"] is not None
    lines = verdict_lines(groups, config, finalists=True)
    assert lines[0].startswith(f"best finalist by mean val_acc: finalist {best['finalist']}")
    assert "3 seeds each" in lines[1]


def test_final_epochs_default_to_the_searchs_budget_and_shrink_for_smoke_runs():
    assert tiny().final_epochs == 3
    longer = tiny(final={"epochs": 9})
    assert longer.final_epochs == 9 and longer.trial.epochs == 3
    smoke = load_config(REPO / "configs/optuna.yaml", ["final.epochs=40"])
    assert (
        load_config(
            REPO / "configs/optuna.yaml",
            ["final.epochs=40", *smoke_overrides(smoke, synthetic=True)],
        ).final_epochs
        == 2
    )


@pytest.mark.slow
def test_finalisation_is_off_for_top_k_0_and_waits_for_a_finished_search(ray_session, tmp_path):
    config = tiny(final={"top_k": 0}, search={"num_samples": 2})
    results = run_tuner(config, load_dataset(config.data), tmp_path, build_plan(config, tmp_path))
    assert finalise(config, None, tmp_path, results) is None
    assert not (tmp_path / FINAL_FOLDER).exists()


@pytest.mark.slow
def test_a_grid_writes_groups_with_intervals(ray_session, tmp_path):
    config = ExperimentConfig.model_validate(
        {
            "data": TINY_DATA,
            "trial": {"hidden": 8, "epochs": 2, "batch_size": 100},
            "search": {"grid": {"lr": [0.01, 0.0001], "seed": [0, 1, 2]}},
        }
    )
    results = run_tuner(config, load_dataset(config.data), tmp_path, build_plan(config, tmp_path))
    epochs, trials = build_tables(results, config)
    groups = grid_groups(trials, epochs, config)
    assert sorted(g["lr"] for g in groups) == [0.0001, 0.01] and [g["n"] for g in groups] == [3, 3]
    assert {g["group"] for g in groups} == {"lr 0.01", "lr 0.0001"}
    for g in groups:
        assert g["test_acc_ci_low"] <= g["test_acc_mean"] <= g["test_acc_ci_high"]
        mine = [t["test_acc"] for t in trials.to_pylist() if t["lr"] == g["lr"]]
        assert g["test_acc_mean"] == pytest.approx(sum(mine) / 3)
    assert "seeds each" in verdict_lines(groups, config, finalists=False)[1]


# A search of 2 tiny trials, then 1 finalist × 3 seeds, one trial at a time, slow enough
# (~1 s an epoch) to be killed while the finalists train.
SLOW_FINAL = [
    "--smoke",
    "--no-dashboard",
    "--no-report",
    "--set",
    "search.space={lr: {loguniform: [0.0005, 0.002]}}",
    "--set",
    "trial.hidden=1024",
    "--set",
    "trial.epochs=5",
    "--set",
    "data.train_subset=4000",
    "--set",
    "search.max_concurrent=1",
    "--set",
    "final.top_k=1",
    "--set",
    "final.seeds=3",
]


@pytest.mark.slow
def test_a_run_killed_while_finalising_resumes_the_finalists(tmp_path):
    run = tmp_path / "f"
    proc = start_script("tuning/run_optuna.py", *SLOW_FINAL, "--results-dir", str(tmp_path),
                        "--name", "f")  # fmt: skip
    # The driver and its Ray, mid-finalisation.
    kill_when(proc, lambda: len(finished_trials(run / FINAL_FOLDER)) >= 1, timeout=400)
    search_logs = {
        p.name: (p / "result.json").read_text() for p in run.glob("ray/*/") if p.is_dir()
    }
    done = {p.name: (p / "result.json").read_text() for p in finished_trials(run / FINAL_FOLDER)}
    assert not (run / "final.parquet").exists()

    resumed = run_script(
        "tuning/run_optuna.py", "--results-dir", str(tmp_path), "--name", "f", "--resume",
        "--no-dashboard", "--no-report",
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    final = pq.read_table(run / "final.parquet").to_pylist()
    assert [r["status"] for r in final] == ["completed"] * 3
    assert [r["epochs_completed"] for r in final] == [5, 5, 5]
    assert len({r["seed"] for r in final}) == 3
    for trial_id, log in done.items():  # finished before the kill: not trained again
        assert (run / FINAL_FOLDER / trial_id / "result.json").read_text() == log
    for trial_id, log in search_logs.items():  # the search is not run again either
        if (run / "ray" / trial_id / "result.json").exists():
            assert (run / "ray" / trial_id / "result.json").read_text() == log
    assert pq.read_table(run / "trials.parquet").num_rows == 2
    groups = pq.read_table(run / "groups.parquet").to_pylist()
    assert len(groups) == 1 and groups[0]["n"] == 3
    assert "winner: finalist 1" in resumed.stdout
