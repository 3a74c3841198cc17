"""Warm start: an earlier run's finished trials in a new study, marked, before the sampler
proposes."""

from pathlib import Path

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, run_main, run_script
from tuning.config import ConfigError, load_config
from tuning.config.keys import RUN_MARK, TRIAL_MARK
from tuning.config.space import optuna_space
from tuning.results.tables import write_config
from tuning.search.plan import build_plan, make_sampler
from tuning.search.study import STUDY_FILE
from tuning.search.warm_start import seed_study

SPACE = "search.space={lr: {loguniform: [0.0001, 0.01]}, hidden: {choice: [64, 128]}}"


def search_config(*overrides: str):
    return load_config(REPO / "configs/optuna.yaml", [SPACE, *overrides])


def earlier_run(folder: Path, trials: list[dict], *overrides: str) -> Path:
    """A run folder as run_optuna.py leaves it, tables made by hand: each trial's val_acc
    rises by 0.01 an epoch to its `value`."""
    folder.mkdir(parents=True)
    write_config(folder, search_config(*overrides))
    epochs = []
    for t in trials:
        for epoch in range(1, t["epochs_completed"] + 1):
            value = t["value"] - 0.01 * (t["epochs_completed"] - epoch)
            epochs.append({"trial_id": t["trial_id"], "epoch": epoch, "val_acc": value})
    rows = [{k: v for k, v in t.items() if k != "value"} for t in trials]
    pq.write_table(pa.Table.from_pylist(rows), folder / "trials.parquet")
    pq.write_table(pa.Table.from_pylist(epochs), folder / "epochs.parquet")
    return folder


def trial(trial_id, lr, hidden, value, status="completed", epochs=3, **more):
    return {"trial_id": trial_id, "status": status, "lr": lr, "hidden": hidden,
            "epochs_completed": epochs, "value": value, **more}  # fmt: skip


def test_finished_trials_enter_the_study_marked_and_the_rest_are_counted(tmp_path):
    earlier = earlier_run(
        tmp_path / "earlier",
        [
            trial("a", 0.001, 128, 0.50),
            trial("b", 0.003, 64, 0.45, status="early_stopped", epochs=2),
            trial("c", 0.5, 128, 0.30),  # lr outside the new range
            trial("d", 0.001, 256, 0.40),  # hidden not among the new choices
            trial("e", 0.001, None, 0.42),  # no hidden: the earlier space lacked it
            trial("f", 0.002, 64, 0.41, status="error", epochs=1),
        ],
    )
    config = search_config(f"search.warm_start=[{earlier}]")
    line, params = seed_study(config, tmp_path / STUDY_FILE)
    assert line.startswith("warm start: 2 finished trials of 1 earlier run added to the study")
    assert "4 left out (1 missing hidden, 2 outside the space, 1 unfinished)" in line
    assert "the first 8 proposals are still random ones" in line
    assert params == [{"lr": 0.001, "hidden": 128}, {"lr": 0.003, "hidden": 64}]
    study = optuna.load_study(
        study_name=tmp_path.name, storage=f"sqlite:///{tmp_path / STUDY_FILE}"
    )
    a, b = study.trials
    assert a.state == optuna.trial.TrialState.COMPLETE and a.value == pytest.approx(0.50)
    assert a.intermediate_values == pytest.approx({1: 0.48, 2: 0.49, 3: 0.50})
    assert b.value == pytest.approx(0.45) and sorted(b.intermediate_values) == [1, 2]
    assert a.user_attrs == {RUN_MARK: str(earlier.resolve()), TRIAL_MARK: "a"}
    assert isinstance(a.distributions["lr"], optuna.distributions.FloatDistribution)
    assert a.distributions["lr"].log


def test_a_halving_runs_rung_trials_enter_with_the_warmup_searched_for_the_full_budget(tmp_path):
    # Halving 20 epochs: a 2-epoch rung trial trained a tenth of its warm-up.
    space = "search.space={lr: {loguniform: [0.0001, 0.01]}, warmup: {uniform: [0.0, 4.0]}}"
    rows = [
        {**trial("rung", 0.001, 64, 0.40, epochs=2), "epochs": 2, "warmup": 0.4},
        {**trial("full", 0.002, 64, 0.50, epochs=20), "epochs": 20, "warmup": 4.0},
    ]
    earlier = earlier_run(tmp_path / "earlier", rows, space, "scheduler.kind=halving")
    config = search_config(space, f"search.warm_start=[{earlier}]")
    _, params = seed_study(config, tmp_path / STUDY_FILE)
    assert params == [{"lr": 0.001, "warmup": pytest.approx(4.0)}, {"lr": 0.002, "warmup": 4.0}]


# Each sampler's random start-up proposer: Optuna keeps it private; read here only to see it
# unused.
RANDOM_PART = {"tpe": "_random_sampler", "gp": "_independent_sampler"}


@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_enough_earlier_trials_mean_the_sampler_proposes_from_the_start(
    tmp_path, monkeypatch, sampler
):
    good = [trial(f"t{i}", 0.001 + 0.0001 * i, 128, 0.5 + 0.001 * i) for i in range(6)]
    bad = [trial(f"u{i}", 0.008 + 0.0001 * i, 64, 0.2) for i in range(6)]
    earlier = earlier_run(tmp_path / "earlier", good + bad)
    config = search_config(f"search.warm_start=[{earlier}]", f"search.sampler={sampler}")
    line, _ = seed_study(config, tmp_path / STUDY_FILE)
    assert "12 finished trials" in line and "random" not in line
    # As the search opens it (tuning.search.study.open_study): the same name and storage.
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / STUDY_FILE}",
        study_name=tmp_path.name,
        direction="maximize",
        load_if_exists=True,
        sampler=make_sampler(config.search),
    )

    def no_random(*args, **kwargs):
        raise AssertionError("a start-up (random) proposal after a warm start")

    monkeypatch.setattr(
        getattr(study.sampler, RANDOM_PART[sampler]), "sample_independent", no_random
    )
    proposal = study.ask(optuna_space(config))
    assert 1e-4 <= proposal.params["lr"] <= 1e-2 and proposal.params["hidden"] in (64, 128)


def test_a_first_point_already_tried_is_not_tried_again(tmp_path):
    earlier = earlier_run(tmp_path / "earlier", [trial("a", 0.001, 128, 0.5)])
    config = search_config(f"search.warm_start=[{earlier}]")
    run = tmp_path / "new"
    run.mkdir()
    plan = build_plan(config, run)  # the trial section's point: lr 0.001, hidden 128
    first = plan.search_alg.suggest("t1")
    assert (first["lr"], first["hidden"]) != (0.001, 128)  # TPE's proposal, not the point
    assert any(note.startswith("warm start: 1 finished") for note in plan.notes)


def test_a_folder_that_is_not_a_run_or_has_another_metric_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    config = search_config(f"search.warm_start=[{tmp_path / 'empty'}]")
    with pytest.raises(ConfigError, match="is not a run folder"):
        seed_study(config, tmp_path / STUDY_FILE)
    other = earlier_run(
        tmp_path / "loss", [trial("a", 0.001, 128, 0.5)], "metric=val_loss", "mode=min"
    )
    config = search_config(f"search.warm_start=[{other}]")
    with pytest.raises(ConfigError, match="optimised val_loss"):
        seed_study(config, tmp_path / STUDY_FILE)


def test_warm_start_needs_an_optuna_search():
    with pytest.raises(ConfigError, match="warm_start feeds an Optuna study"):
        load_config(REPO / "configs/grid.yaml", ["search.warm_start=[/tmp/x]"])


@pytest.mark.slow
def test_a_search_warm_started_from_a_search_and_from_a_grid(tmp_path):
    def run(script, name, *args):
        proc = run_script(
            f"tuning/{script}", "--smoke", "--no-dashboard", "--no-report",
            "--results-dir", str(tmp_path), "--name", name, *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc

    run("run_optuna.py", "first", "--set", "final.top_k=0")
    run("run_grid.py", "grid")
    proc = run(
        "run_optuna.py",
        "second",
        "--set",
        "final.top_k=0",
        "--warm-start",
        str(tmp_path / "first"),
        "--warm-start",
        str(tmp_path / "grid"),
    )
    # The grid's trials ran without weight decay, outside the search's log range.
    assert "note: warm start: 2 finished trials of 2 earlier runs added" in proc.stdout
    assert "2 left out (2 outside the space)" in proc.stdout
    second = tmp_path / "second"
    study = optuna.load_study(study_name=second.name, storage=f"sqlite:///{second / STUDY_FILE}")
    marked = [t for t in study.trials if RUN_MARK in t.user_attrs]
    own = [t for t in study.trials if RUN_MARK not in t.user_attrs]
    assert [t.user_attrs[RUN_MARK] for t in marked] == [str(tmp_path / "first")] * 2
    assert len(own) == 2
    trials = pq.read_table(second / "trials.parquet")
    first_ids = set(pq.read_table(tmp_path / "first" / "trials.parquet")["trial_id"].to_pylist())
    assert trials.num_rows == 2 and not first_ids & set(trials["trial_id"].to_pylist())
    assert load_config(second / "config.yaml").search.warm_start == [
        str(tmp_path / "first"),
        str(tmp_path / "grid"),
    ]

    refused = run_main(
        "tuning/run_optuna.py", "--smoke", "--results-dir", str(tmp_path), "--name", "third",
        "--warm-start", str(tmp_path),
    )  # fmt: skip
    assert refused.returncode == 2 and "is not a run folder" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "third").exists()


@pytest.mark.parametrize(
    "script, args, expected",
    [
        (
            "run_grid.py",
            ["--warm-start", "/tmp"],
            "--warm-start: search.warm_start feeds an Optuna",
        ),
        ("run_optuna.py", ["--resume", "--name", "x", "--warm-start", "/tmp"], "--warm-start"),
    ],
)
def test_warm_start_misuse_exits_2(tmp_path, script, args, expected):
    proc = run_script(f"tuning/{script}", "--results-dir", str(tmp_path), *args, timeout=120)
    assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
