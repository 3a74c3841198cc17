"""A model of the user's own, named by an import path: built, checked, searched, trained."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, continued_epoch, importable_module, script_command
from trainable.data import DataConfig, load_dataset
from trainable.families import FAMILIES, ModelError, build_model, check_model, readers
from trainable.loop import Training
from trainable.settings import TrialConfig
from trainable.steps import AutogradStep
from tuning.config import ConfigError, check_own_models, load_config
from tuning.config.space import param_space
from tuning.search.plan import build_plan

MODULE = """
from torch import nn


def tiny(input_shape, num_classes, width=4):
    return nn.Sequential(
        nn.Conv2d(input_shape[0], width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
    )


class Linear(nn.Module):
    def __init__(self, input_shape, num_classes, scale=1.0):
        super().__init__()
        c, h, w = input_shape
        self.scale = scale
        self.head = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        return self.head(x.flatten(1)) * self.scale


def one_too_many(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes + 1))


def fails(input_shape, num_classes):
    raise RuntimeError("no such layer")


def not_a_module(input_shape, num_classes):
    return 3


NOT_CALLABLE = 3
"""


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """`usermodels.py` in a folder on sys.path, as the working directory would be."""
    with importable_module(tmp_path, monkeypatch, "usermodels", MODULE) as folder:
        yield folder


def test_a_function_or_a_class_is_built_with_the_datas_shape_and_model_args(own_module):
    model = build_model(TrialConfig(model="usermodels:tiny", model_args={"width": 6}), (3, 8, 8), 5)
    assert model[0].out_channels == 6 and model[-1].out_features == 5
    linear = build_model(TrialConfig(model="usermodels:Linear"), (1, 4, 4), 3)
    assert linear.head.in_features == 16 and linear(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
    check_model(TrialConfig(model="usermodels:Linear", model_args={"scale": 2.0}), (3, 8, 8), 10)


@pytest.mark.parametrize(
    "model, message",
    [
        ("nosuchmodule:build", "cannot import nosuchmodule"),
        ("usermodels:missing", "has no attribute 'missing'"),
        ("usermodels:NOT_CALLABLE", "is not a function or class"),
        ("not a path", "neither a built-in family"),
    ],
)
def test_a_path_that_names_no_model_is_refused_when_the_config_loads(own_module, model, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        TrialConfig(model=model)
    assert model in str(err.value)


@pytest.mark.parametrize(
    "model, model_args, message",
    [
        ("usermodels:one_too_many", {}, "gave (2, 11); it must give logits of shape (2, 10)"),
        ("usermodels:fails", {}, "building it failed (RuntimeError: no such layer)"),
        ("usermodels:not_a_module", {}, "returned int, not a torch nn.Module"),
        ("usermodels:tiny", {"depth": 2}, "unexpected keyword argument 'depth'"),
    ],
)
def test_a_model_that_does_not_give_logits_is_refused(own_module, model, model_args, message):
    with pytest.raises(ModelError, match=re.escape(message)) as err:
        check_model(TrialConfig(model=model, model_args=model_args), (3, 8, 8), 10)
    assert model in str(err.value)


def _config(tmp_path: Path, text: str, overrides=()):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return load_config(path, list(overrides))


def test_model_args_are_searched_and_set_with_dotted_keys(own_module):
    config = _config(
        own_module,
        "trial: {model: 'usermodels:tiny', model_args: {width: 4}, epochs: 3}\n"
        "search: {kind: optuna, space: {model_args.width: {choice: [2, 8]}, "
        "lr: {loguniform: [0.0001, 0.01]}}}\n",
        ["trial.model_args.width=3"],
    )
    assert config.trial.model_args == {"width": 3}
    space = param_space(config)
    assert set(space["model_args"]) == {"width"} and space["model_args"]["width"] is not None
    assert space["model_args"]["width"].categories == [2, 8]
    plan = build_plan(config, own_module)
    # The first point: the trial section's own width, moved into the space.
    assert plan.search_alg.suggest("t1") == {"model_args": {"width": 2}, "lr": 0.001}
    assert [t.model_args for t in config.own_models()] == [{"width": 3}, {"width": 2}, {"width": 8}]


def test_every_searched_value_of_a_models_argument_is_checked(own_module):
    config = _config(
        own_module,
        "trial: {model: 'usermodels:tiny'}\nsearch: {grid: {model_args.width: [2, 0]}}\n",
    )
    with pytest.raises(ConfigError, match="usermodels:tiny"):  # a conv with 0 channels fails
        check_own_models(config, (3, 8, 8), 10)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "search: {grid: {model_args.width: [2, 4]}}",
            "search.grid.model_args.width only affects a model of your own",
        ),
        (
            "trial: {model: 'usermodels:tiny'}\nsearch: {grid: {hidden: [2, 4]}}",
            "search.grid.hidden only affects model mlp",
        ),
        ("trial: {model_args: {width: 2}}", "trial.model_args only reach a model named by"),
        ("trial: {model: 'usermodels:tiny', model_args: {num_classes: 3}}", "come from the data"),
        ("search: {grid: {model_args: [1]}}", "'model_args' is not a trial parameter"),
    ],
)
def test_arguments_no_model_reads_are_refused(own_module, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _config(own_module, text)


def test_which_families_read_a_setting_comes_from_the_registry():
    for name, family in FAMILIES.items():
        for setting in family.settings.model_fields:
            assert name in readers(setting)
            assert setting in TrialConfig.model_fields  # every family setting is a trial field
    assert readers("lr") is None  # every model trains with it
    assert readers("model_args.width") == set()  # only a model of the user's own


def test_an_own_model_trains_through_autograd_and_restores_exactly(own_module):
    data = load_dataset(DataConfig(source="synthetic", val_size=200, train_subset=1000))
    trial = TrialConfig(
        model="usermodels:Linear", model_args={"scale": 0.5}, augment="flip", epochs=3
    )
    first = Training(trial, data, torch.device("cpu"))
    assert isinstance(first.step, AutogradStep)
    assert not first.data.channels_last  # a user's model keeps the plain layout
    first.train_epoch()
    expected, got = continued_epoch(first, data)
    assert got["train_loss"] == expected["train_loss"]
    assert first.model.scale == 0.5
    assert first.evaluate("val")["val_acc"] > 0.25  # chance is 0.1


def _run_in(folder: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """An entry script run from `folder`, as a user runs it beside their own module."""
    command = script_command(script, *args)
    command["cwd"] = folder
    return subprocess.run(**command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_own_model_trains_through_the_grid_and_a_search(own_module):
    results = own_module / "results"
    grid = _run_in(
        own_module,
        "tuning/run_grid.py",
        *("--smoke", "--no-dashboard", "--no-report", "--results-dir", str(results)),
        *("--name", "grid", "--set", "trial.model=usermodels:tiny"),
        *("--set", "search.grid={model_args.width: [2, 6]}"),
    )
    assert grid.returncode == 0, grid.stderr[-3000:]
    trials = pq.read_table(results / "grid" / "trials.parquet").to_pylist()
    assert sorted(row["model_args.width"] for row in trials) == [2, 6]
    assert {row["status"] for row in trials} == {"completed"}
    assert {row["model"] for row in trials} == {"usermodels:tiny"}

    search = _run_in(
        own_module,
        "tuning/run_optuna.py",
        *("--smoke", "--no-dashboard", "--no-report", "--results-dir", str(results)),
        *("--name", "search", "--set", "trial.model=usermodels:Linear"),
        *("--set", "search.space={model_args.scale: {uniform: [0.5, 2.0]}}"),
    )
    assert search.returncode == 0, search.stderr[-3000:]
    trials = pq.read_table(results / "search" / "trials.parquet").to_pylist()
    assert len(trials) == 2 and all(0.5 <= row["model_args.scale"] <= 2.0 for row in trials)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, message",
    [
        ("usermodels:missing", "has no attribute 'missing'"),
        ("usermodels:one_too_many", "it must give logits of shape (2, 10)"),
    ],
)
def test_a_wrong_model_exits_2_and_leaves_no_run_folder(own_module, model, message):
    results = own_module / "results"
    proc = _run_in(
        own_module,
        "tuning/run_grid.py",
        *("--smoke", "--no-dashboard", "--results-dir", str(results), "--name", "bad"),
        *("--set", f"trial.model={model}"),
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr and model in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (results / "bad").exists()


def test_the_readmes_example_model_is_a_model(tmp_path, monkeypatch):
    """The README's "Add your own model" file, as written there, builds and gives logits."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Add your own model") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "mymodels.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mymodels", None)
    path = re.search(r"trial\.model=(mymodels:\w+)", section).group(1)
    check_model(TrialConfig(model=path, model_args={"width": 8}), (3, 32, 32), 10)
