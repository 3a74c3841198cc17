"""Bad input through the entry scripts' `main`, in this process: refused with exit status 2, a
message naming the problem, and nothing written (the slow tests run the scripts themselves)."""

import pytest

from tuning.cli import main

CASES = [
    ("configs/grid.yaml", ["--set", "trial.lr=0"], "trial.lr"),
    ("configs/grid.yaml", ["--set", "trial.nope=1"], "'nope' is not a key of trial"),
    ("configs/grid.yaml", ["--config", "missing.yaml"], "cannot read config"),
    ("configs/grid.yaml", ["--data-dir", "tests"], "holds neither CIFAR-10's files"),
    ("configs/optuna.yaml", ["--set", "scheduler.grace_period=99"], "grace_period"),
    ("configs/optuna.yaml", ["--set", "search.space={}"], "needs a non-empty search.space"),
    ("configs/optuna.yaml", ["--set", "search.kind=grid"], "a grid uses search.grid"),
    ("configs/optuna.yaml", ["--set", "scheduler.kind=bohb"], "scheduler.kind"),
    ("configs/grid.yaml", ["--smoke", "--storage", "nope://bucket/runs"], "cannot be opened"),
    ("configs/grid.yaml", ["--smoke", "--set", "run.storage=runs"], "must be an absolute path"),
    ("configs/grid.yaml", ["--smoke", "--address", "127.0.0.1:1"], "no Ray cluster answers"),
    ("configs/grid.yaml", ["--smoke", "--set", "trial.model=nosuchpackage:build"], "cannot import"),
    (
        "configs/grid.yaml",
        ["--smoke", "--set", "search.grid={model_args.width: [2]}"],
        "only affects a model of your own",
    ),
]


@pytest.mark.parametrize("config, args, expected", CASES)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, capsys, config, args, expected):
    assert main(config, ["--results-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err
    assert list(tmp_path.iterdir()) == []
