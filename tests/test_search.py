"""Searchers and schedulers: built from config, run for real on tiny synthetic data."""

import optuna
import pytest
from ray import tune
from ray.tune.schedulers import (
    AsyncHyperBandScheduler,
    FIFOScheduler,
    HyperBandScheduler,
    MedianStoppingRule,
    PopulationBasedTraining,
)

from tests.conftest import tiny_config
from trainable.data import load_dataset
from tuning.config import Distribution
from tuning.config.space import to_optuna, to_tune
from tuning.results.tune_logs import build_tables
from tuning.run.tuner import judge_best, run_tuner, trials_at_once
from tuning.search.plan import build_plan
from tuning.search.study import STUDY_FILE


@pytest.fixture(scope="module")
def data():
    return load_dataset(tiny_config().data)


def run(config, data, tmp_path):
    plan = build_plan(config, tmp_path)
    return plan, run_tuner(config, data, tmp_path, plan)


SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "batch_size": {"choice": [50, 100]}}


@pytest.mark.parametrize("kind", ["halving", "asha", "median", "hyperband", "pbt", "fifo"])
def test_every_scheduler_runs_a_tiny_search(ray_session, data, tmp_path, kind):
    config = tiny_config(
        search={"kind": "optuna", "space": SPACE, "num_samples": 3, "max_concurrent": 2},
        scheduler={"kind": kind, "min_samples_required": 2},
    )
    plan, results = run(config, data, tmp_path)
    assert len(results) == 3 and not results.errors
    epochs, trials = build_tables(results, config)
    assert epochs.num_rows == sum(trials.column("epochs_completed").to_pylist())
    if kind == "pbt":
        assert any("random search" in note for note in plan.notes)
        assert not (tmp_path / STUDY_FILE).exists()
    else:
        assert (tmp_path / STUDY_FILE).exists()


def test_asha_stops_hopeless_trials_early(ray_session, data, tmp_path):
    # One good learning rate first, then three that cannot learn in 4 epochs; one at a time,
    # so each hopeless trial meets the good one's score at the first rung.
    config = tiny_config(
        trial={"epochs": 4},
        search={"grid": {"lr": [3e-3, 1e-7, 1e-7 * 1.01, 1e-7 * 1.02]}, "max_concurrent": 1},
        scheduler={"kind": "asha", "grace_period": 1, "reduction_factor": 2},
    )
    _, results = run(config, data, tmp_path)
    _, trials = build_tables(results, config)
    by_lr = {row["lr"]: row for row in trials.to_pylist()}
    assert by_lr[3e-3]["status"] == "completed" and by_lr[3e-3]["epochs_completed"] == 4
    hopeless = [row for lr, row in by_lr.items() if lr < 1e-6]
    assert [row["status"] for row in hopeless] == ["early_stopped"] * 3
    assert all(row["epochs_completed"] < 4 for row in hopeless)


class TrialsWhenTheFirstStarts(tune.Callback):
    """How many trials Tune had made when the first one started."""

    def __init__(self) -> None:
        self.made: int | None = None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if self.made is None:
            self.made = len(trials)


def test_an_optuna_search_starts_as_many_trials_at_once_as_fit(ray_session, data, tmp_path):
    # Tune's default for a searcher of its own is one trial pending at a time: the second is
    # made only once the first has started, and short trials (seconds, on a GPU) then run one
    # by one. As many as the resources hold must be under way together.
    config = tiny_config(
        trial={"epochs": 1},
        search={"kind": "optuna", "space": SPACE, "num_samples": 4},
        scheduler={"kind": "fifo"},
        resources={"cpus_per_trial": 1},
    )
    assert trials_at_once(config) == 2  # the session's Ray has 2 CPUs
    first = TrialsWhenTheFirstStarts()
    results = run_tuner(config, data, tmp_path, build_plan(config, tmp_path), callbacks=[first])
    assert len(results) == 4 and not results.errors
    assert first.made == 2


def study_params(path):
    study = optuna.load_study(study_name=path.parent.name, storage=f"sqlite:///{path}")
    return study, [t.params for t in sorted(study.trials, key=lambda t: t.number)]


def test_same_seed_same_proposals_and_the_study_is_stored(ray_session, data, tmp_path):
    config = tiny_config(
        trial={"epochs": 1},
        search={"kind": "optuna", "space": SPACE, "num_samples": 4, "max_concurrent": 1, "seed": 7},
        scheduler={"kind": "fifo"},
    )
    proposals = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _, results = run(config, data, tmp_path / name)
        study, params = study_params(tmp_path / name / STUDY_FILE)
        assert len(study.trials) == len(results) == 4  # one Optuna trial per Tune trial
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        proposals.append(params)
    assert proposals[0] == proposals[1]
    assert proposals[0][0] == {"lr": 1e-3, "batch_size": 100}  # the trial section's point first
    assert len({p["lr"] for p in proposals[0]}) == 4


def test_the_best_trial_is_judged_once_on_test(ray_session, data, tmp_path):
    config = tiny_config(
        search={"kind": "random", "space": SPACE, "num_samples": 2},
        scheduler={"kind": "fifo"},
    )
    _, results = run(config, data, tmp_path)
    for result in results:  # a search leaves the test set alone
        assert "test_acc" not in result.metrics
    best, test_acc = judge_best(results, config, data)
    assert best.metrics["val_acc"] == max(r.metrics["val_acc"] for r in results)
    assert 0.1 < test_acc <= 1
    _, trials = build_tables(results, config, judged={best.path.split("/")[-1]: test_acc})
    assert sorted(trials.column("test_acc").to_pylist(), key=str) == [test_acc, None]


def on_step(values, low: float, step: float) -> bool:
    """Whether every value is `low` plus a whole number of `step`s (up to float rounding)."""
    return all(abs((v - low) / step - round((v - low) / step)) < 1e-6 for v in values)


def optuna_draws(dist, n: int = 300) -> list:
    """`n` values Optuna's random sampler draws from the distribution `dist`."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [study.ask({"x": dist}).params["x"] for _ in range(n)]


def test_distributions_translate_with_inclusive_ranges():
    def draws(dist: Distribution) -> list:
        return list(to_tune(dist).sample(size=2000, random_state=0))

    dice = draws(Distribution(randint=(1, 3)))
    assert set(dice) == {1, 2, 3}  # Tune's upper end is exclusive: the translation adds one
    lrs = draws(Distribution(loguniform=(1e-4, 1e-2)))
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    below = sum(lr < 1e-3 for lr in lrs) / len(lrs)
    assert 0.4 < below < 0.6  # uniform in log: half below the geometric middle (uniform: 9%)
    rates = draws(Distribution(uniform=(0.2, 0.6)))
    assert all(0.2 <= r <= 0.6 for r in rates) and 0.35 < sum(r < 0.4 for r in rates) / 2000 < 0.65
    steps = draws(Distribution(quniform=(0.001, 0.01, 0.001)))
    assert all(0.001 <= s <= 0.01 + 1e-12 for s in steps) and on_step(steps, 0.001, 0.001)
    assert len({round(s, 6) for s in steps}) == 10  # both ends among the ten values
    assert set(draws(Distribution(choice=["sgd", "adam"]))) == {"sgd", "adam"}
    assert Distribution(loguniform=(1e-6, 1e-2)).nearest(0.0) == 1e-6
    assert Distribution(choice=["sgd", "adam"]).nearest("adamw") == "sgd"


def test_optuna_distributions_keep_ranges_steps_and_scale():
    stepped = to_optuna(Distribution(quniform=(0.001, 0.01, 0.001)))
    assert stepped == optuna.distributions.FloatDistribution(0.001, 0.01, step=0.001)
    drawn = optuna_draws(stepped)
    assert all(0.001 <= v <= 0.01 + 1e-12 for v in drawn) and on_step(drawn, 0.001, 0.001)
    assert len({round(v, 6) for v in drawn}) == 10
    log = to_optuna(Distribution(loguniform=(1e-4, 1e-2)))
    assert log.log and log.step is None and (log.low, log.high) == (1e-4, 1e-2)
    assert 0.4 < sum(v < 1e-3 for v in optuna_draws(log)) / 300 < 0.6
    assert set(optuna_draws(to_optuna(Distribution(randint=(1, 3))))) == {1, 2, 3}
    choice = to_optuna(Distribution(choice=["sgd", "adam"]))
    assert set(optuna_draws(choice, 50)) == {"sgd", "adam"}


@pytest.mark.parametrize("tpe", [{}, {"multivariate": False, "constant_liar": False}])
def test_tpe_runs_as_the_config_says(tmp_path, tpe):
    config = tiny_config(search={"kind": "optuna", "space": SPACE, "tpe": tpe, "startup_trials": 4})
    sampler = build_plan(config, tmp_path).search_alg.study.sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    # Optuna keeps these private; read here only to see that the config reaches them.
    assert sampler._multivariate == sampler._constant_liar == (tpe == {})
    assert sampler._n_startup_trials == 4


def test_a_gaussian_process_proposes_when_the_config_says(tmp_path):
    config = tiny_config(
        search={"kind": "optuna", "space": SPACE, "sampler": "gp", "startup_trials": 3}
    )
    sampler = build_plan(config, tmp_path).search_alg.study.sampler
    assert isinstance(sampler, optuna.samplers.GPSampler)
    assert sampler._n_startup_trials == 3  # private in Optuna; read only to see the config reach it


@pytest.mark.parametrize("kind", ["asha", "median", "hyperband", "pbt", "fifo"])
def test_each_scheduler_is_built_as_the_config_says(tmp_path, kind):
    config = tiny_config(
        trial={"epochs": 9, "lr": 1e-3},
        search={"kind": "random", "space": {"lr": {"loguniform": [1e-4, 1e-2]}}},
        scheduler={
            "kind": kind,
            "grace_period": 2,
            "reduction_factor": 2,
            "min_samples_required": 4,
            "perturbation_interval": 3,
            "quantile_fraction": 0.5,
        },
    )
    scheduler = build_plan(config, tmp_path).scheduler
    expected = {
        "asha": AsyncHyperBandScheduler,
        "median": MedianStoppingRule,
        "hyperband": HyperBandScheduler,
        "pbt": PopulationBasedTraining,
        "fifo": FIFOScheduler,
    }[kind]
    assert type(scheduler) is expected
    if kind == "fifo":
        return
    assert scheduler._time_attr == "training_iteration"  # epochs, not seconds
    if kind == "asha":
        assert scheduler._max_t == 9 and scheduler._reduction_factor == 2
        (bracket,) = scheduler._brackets
        # Rungs from the grace period, a factor of 2 apart, below the epoch budget.
        assert sorted(milestone for milestone, _ in bracket._rungs) == [2, 4, 8]
    elif kind == "median":
        assert scheduler._grace_period == 2 and scheduler._min_samples_required == 4
    elif kind == "hyperband":
        assert scheduler._max_t_attr == 9 and scheduler._eta == 2
    elif kind == "pbt":
        assert scheduler._perturbation_interval == 3 and scheduler._quantile_fraction == 0.5
        mutations = scheduler._hyperparam_mutations
        assert set(mutations) == {"lr", "weight_decay"}
        lrs = mutations["lr"].sample(size=500, random_state=0)
        assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and min(lrs) < 2e-4 and max(lrs) > 5e-3


@pytest.mark.parametrize(
    "sections, expected",
    [
        ({"search": {"kind": "optuna"}}, "needs a non-empty search.space"),
        ({"search": {"kind": "optuna", "space": {"lr": {"loguniform": [0, 1]}}}}, "low > 0"),
        ({"search": {"kind": "optuna", "space": {"lr": {"uniform": [2, 1]}}}}, "low < high"),
        ({"search": {"kind": "optuna", "space": {"lr": {"choice": []}}}}, "at least one"),
        ({"search": {"kind": "optuna", "space": {"lr": {}}}}, "exactly one of"),
        ({"search": {"kind": "optuna", "space": {"hidden": {"randint": [0, 4]}}}}, "hidden"),
        ({"search": {"kind": "random", "space": {"nope": {"choice": [1]}}}}, "not a trial"),
        ({"search": {"kind": "grid", "space": SPACE}}, "a grid uses search.grid"),
        ({"scheduler": {"kind": "asha", "grace_period": 3}}, "grace_period"),
        ({"scheduler": {"kind": "asha", "reduction_factor": 1}}, "reduction_factor"),
    ],
)
def test_bad_search_configs_are_refused(sections, expected):
    with pytest.raises(ValueError, match=expected):
        tiny_config(**sections)
