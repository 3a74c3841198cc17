"""Successive halving by retraining: no configuration passes a rung for arriving first, the
best of each rung trains again with the next budget, and the searcher's rungs survive a save
and restore (a resumed search continues them), also when the run is killed and resumed."""

import math
import pickle

import optuna
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tests.conftest import finished_trials, kill_when, run_script, start_script
from tuning.config import ExperimentConfig
from tuning.config.keys import PROMOTES_MARK, TUNE_TRIAL_MARK
from tuning.config.schema import SchedulerConfig
from tuning.results.summary import budget_lines
from tuning.search.halving import Rungs
from tuning.search.searcher import StudySearcher
from tuning.search.study import study_file, study_url

COMPLETE, PRUNED = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED


@pytest.mark.parametrize(
    "epochs, grace, factor, rungs",
    [(10, 1, 3, [1, 3]), (15, 1, 3, [2, 5]), (10, 2, 3, [3]), (12, 1, 2, [2, 3, 6])],
)
def test_halving_budgets_shrink_from_the_full_one_down_to_the_grace_period(
    epochs, grace, factor, rungs
):
    scheduler = SchedulerConfig(kind="halving", grace_period=grace, reduction_factor=factor)
    assert scheduler.rungs(epochs) == rungs
    assert scheduler.retrains and not SchedulerConfig(kind="asha").retrains


def test_a_rung_promotes_nobody_until_it_holds_reduction_factor_trials():
    rungs = Rungs(budgets=[1, 3, 9], reduction_factor=3, maximize=True)
    rungs.record(0, {"lr": 0}, 1, 0.9)  # the first arrival, and the best: still waits
    rungs.record(1, {"lr": 1}, 1, 0.2)
    assert rungs.promotion() is None
    rungs.record(2, {"lr": 2}, 1, 0.5)
    promoted = rungs.promotion()
    assert (promoted.params, promoted.number, promoted.budget) == ({"lr": 0}, 0, 3)
    assert rungs.promotion() is None  # one of three: once


def test_the_highest_rung_promotes_first_and_a_value_that_is_not_finite_never():
    rungs = Rungs(budgets=[1, 3, 9], reduction_factor=2, maximize=False)  # a loss
    for number, value in enumerate([0.5, 0.4]):
        rungs.record(number, {"n": number}, 1, value)
    for number, value in [(10, math.nan), (11, 0.9)]:
        rungs.record(number, {"n": number}, 3, value)
    assert rungs.promotion().budget == 9  # rung 3 before rung 1
    assert rungs.promotion().params == {"n": 1}  # the lower loss at rung 1
    rungs.record(12, {"n": 12}, 3, None)
    assert rungs.promotion() is None  # rung 3's best two: one promoted, one without a value


def test_halving_needs_optuna_and_epochs_left_to_it():
    base = {"trial": {"epochs": 9}, "scheduler": {"kind": "halving"}}
    space = {"lr": {"loguniform": [1e-4, 1e-2]}}
    for search in (
        {"kind": "random", "space": space},
        {"kind": "optuna", "space": {**space, "epochs": {"choice": [3, 9]}}},
    ):
        with pytest.raises(ValidationError, match="halving"):
            ExperimentConfig.model_validate({**base, "search": search})


@pytest.mark.parametrize("samples, retrains", [(1, False), (3, False), (4, True)])
def test_a_search_too_small_to_promote_trains_every_trial_its_full_budget(
    tmp_path, samples, retrains
):
    from tuning.search.plan import build_plan

    space = {"lr": {"loguniform": [1e-4, 1e-2]}}
    config = ExperimentConfig.model_validate(
        {
            "trial": {"epochs": 9},
            "search": {"kind": "optuna", "num_samples": samples, "space": space},
            "scheduler": {"kind": "halving", "grace_period": 1},
        }
    )
    plan = build_plan(config, tmp_path)
    assert plan.search_alg.suggest("t0").get("epochs", 9) == 9  # the first point: in full
    assert plan.search_alg.suggest("t1").get("epochs", 9) == (1 if retrains else 9)
    assert any("halving needs more than 3" in note for note in plan.notes) != retrains


def finish(searcher: StudySearcher, trial_id: str, config: dict, value: float) -> None:
    result = {"val_acc": value, "training_iteration": config["epochs"], "epoch": config["epochs"]}
    searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, result)


def test_the_searcher_sets_budgets_promotes_and_keeps_its_rungs_over_a_restore(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    searcher = StudySearcher(
        study=study, space=space, metric="val_acc", mode="max", epochs=9,
        points=[{"lr": 0.001}], rungs=Rungs(budgets=[1, 3, 9], reduction_factor=3, maximize=True),
    )  # fmt: skip
    assert searcher.suggest("start") == {"lr": 0.001, "epochs": 9}  # the first point: in full
    finish(searcher, "start", {"epochs": 9}, 0.5)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    assert {c["epochs"] for c in configs.values()} == {1}  # new configurations: the first rung
    for value, trial_id in zip([0.3, 0.6, 0.4], configs, strict=True):
        finish(searcher, trial_id, configs[trial_id], value)
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = StudySearcher.__new__(StudySearcher)  # as Tune unpickles it, then restores
    restored.restore(str(tmp_path / "searcher.pkl"))
    promoted = restored.suggest("t3")
    assert promoted == {**configs["t1"], "epochs": 3}  # the best of three, retrained longer
    # An in-memory study is pickled with the searcher (study.db's storage reopens its file).
    trials = restored.study.get_trials(deepcopy=False)
    assert trials[0].state == COMPLETE and trials[0].value == 0.5
    assert [t.state for t in trials[1:4]] == [PRUNED] * 3  # below the full budget
    assert trials[4].user_attrs[PROMOTES_MARK] == trials[2].number
    finish(restored, "t3", promoted, 0.7)
    assert restored.study.get_trials(deepcopy=False)[4].state == PRUNED
    assert restored.suggest("t4")["epochs"] == 1  # rung 3 holds one: nothing earned yet


def test_a_rungs_warmup_keeps_its_share_of_the_run_searched_or_not():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    space = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
        "warmup": optuna.distributions.FloatDistribution(0.0, 4.5),
    }
    rungs = Rungs(budgets=[1, 3, 9], reduction_factor=3, maximize=True)
    searched = StudySearcher(
        study=study, space=space, metric="val_acc", mode="max", epochs=9,
        points=[{"lr": 0.001, "warmup": 4.5}], rungs=rungs,
    )  # fmt: skip
    assert searched.suggest("start")["warmup"] == 4.5  # the full budget: as searched
    rung = searched.suggest("t0")
    assert rung["epochs"] == 1
    assert rung["warmup"] == pytest.approx(study.trials[-1].params["warmup"] / 9)
    fixed = StudySearcher(
        study=optuna.create_study(direction="maximize"), space={"lr": space["lr"]},
        metric="val_acc", mode="max", epochs=9, rungs=rungs, warmup=1.8,
    )  # fmt: skip
    assert fixed.suggest("t0")["warmup"] == pytest.approx(0.2)  # the trial section's 1.8 / 9


def test_the_budget_lines_count_trials_per_rung_and_time_below_the_full_budget():
    rows = [
        {"status": "completed", "epochs": 1, "epochs_completed": 1, "train_time_s": 10.0},
        {"status": "completed", "epochs": 1, "epochs_completed": 1, "train_time_s": 10.0},
        {"status": "completed", "epochs": 3, "epochs_completed": 3, "train_time_s": 30.0},
        {"status": "completed", "epochs": 9, "epochs_completed": 9, "train_time_s": 90.0},
        {"status": "early_stopped", "epochs": 9, "epochs_completed": 2, "train_time_s": 20.0},
    ]
    assert budget_lines(rows, [1, 3], 9, retrains=True) == [
        "epochs trained: 16",
        "trials per rung: 2 at 1 epochs, 1 at 3, 1 at the full 9 (of 5 trials)",
        "training time: 44% on trials below the full budget (70 of 160 s)",
    ]


def test_the_chosen_trial_is_the_best_of_the_furthest_rung_a_trial_finished():
    from types import SimpleNamespace

    from tuning.run.tuner import best_result

    config = ExperimentConfig.model_validate(
        {
            "trial": {"epochs": 9},
            "search": {"kind": "optuna", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}},
            "scheduler": {"kind": "halving", "grace_period": 1},
        }
    )

    def trial(epochs, budget, val):
        return SimpleNamespace(
            metrics={"val_acc": val, "training_iteration": epochs}, config={"epochs": budget}
        )

    first_rung = [trial(1, 1, 0.30), trial(1, 1, 0.35)]
    second_rung = [trial(3, 3, 0.41), trial(3, 3, 0.40)]
    # Promoted to the full 9 epochs, but the search's time ran out at epoch 6: mid-schedule.
    cut = trial(6, 9, 0.45)
    assert best_result([*first_rung, *second_rung, cut], config) is second_rung[0]
    assert best_result([*first_rung, cut], config) is first_rung[1]
    finished = trial(9, 9, 0.39)
    assert best_result([*first_rung, *second_rung, cut, finished], config) is finished


# A halving search of 4-epoch trials (rungs at 1 and 2 epochs, factor 2), one trial at a time,
# slow enough (~1 s an epoch) to be killed between its rungs.
SLOW_HALVING = [
    "--smoke",
    "--no-dashboard",
    "--no-report",
    "--set",
    "scheduler.kind=halving",
    "--set",
    "search.space={lr: {loguniform: [0.0005, 0.005]}}",
    "--set",
    "trial.hidden=1024",
    "--set",
    "trial.epochs=4",
    "--set",
    "data.train_subset=4000",
    "--set",
    "search.num_samples=8",
    "--set",
    "search.max_concurrent=1",
    "--set",
    "scheduler.reduction_factor=2",
    "--set",
    "final.top_k=0",
]


@pytest.mark.slow
def test_a_killed_halving_search_resumes_with_its_rungs(tmp_path):
    run = tmp_path / "h"
    proc = start_script("tuning/run_optuna.py", *SLOW_HALVING, "--results-dir", str(tmp_path),
                        "--name", "h")  # fmt: skip
    # The first point (its full budget) and two trials through the first rung, the promotion
    # they earned started: a rung with entries to keep.
    kill_when(proc, lambda: len(finished_trials(run / "ray", epochs=1)) >= 4, timeout=300)
    study = optuna.load_study(study_name="h", storage=study_url(run))
    before = {
        t.user_attrs[TUNE_TRIAL_MARK]: t.number for t in study.trials if t.state.is_finished()
    }
    logs = {p.name: (p / "result.json").read_text() for p in run.glob("ray/*/") if p.name in before}
    assert len(before) >= 2

    resumed = run_script("tuning/run_optuna.py", "--results-dir", str(tmp_path), "--name", "h",
                         "--resume", "--no-dashboard", "--no-report")  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert all(t["epochs_completed"] == t["epochs"] for t in trials)  # each its own budget
    assert {t["epochs"] for t in trials} <= {1, 2, 4} and max(t["epochs"] for t in trials) == 4
    for trial_id, log in logs.items():  # finished before the kill: not trained again
        assert (run / "ray" / trial_id / "result.json").read_text() == log

    # The resumed searcher's first rung still holds the trials that finished it before the kill
    # (a searcher rebuilt from nothing would hold only those after), and no configuration was
    # promoted twice.
    budgets = {t["trial_id"]: t["epochs"] for t in trials}
    state = max((run / "ray").glob("searcher-state-*.pkl"), key=lambda p: p.stat().st_mtime)
    with study_file(run / "study.db"):
        rungs = pickle.loads(state.read_bytes())["rungs"]
    first_rung_before = {n for trial_id, n in before.items() if budgets[trial_id] == 1}
    assert len(first_rung_before) >= 2 and first_rung_before <= set(rungs.finished[0])
    study = optuna.load_study(study_name="h", storage=study_url(run))
    sources = [t.user_attrs[PROMOTES_MARK] for t in study.trials if PROMOTES_MARK in t.user_attrs]
    assert sources and len(set(sources)) == len(sources), sources
