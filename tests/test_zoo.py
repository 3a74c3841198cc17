"""The model zoos' builders as they are: `input_shape` only for a builder that names it."""

import subprocess
from pathlib import Path

import optuna
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, importable_module, run_script, script_command
from trainable.families import FAMILIES, build_model, load_factory, names_input_shape
from trainable.settings import TrialConfig
from tuning.config import check_own_models, load_config
from tuning.config.keys import flat_settings
from tuning.config.space import optuna_space

MODULE = """
from torch import nn

calls = []  # the keyword arguments of every call, in order


def _head(num_classes):
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))


def plain(num_classes, width=4):
    calls.append({"num_classes": num_classes, "width": width})
    return _head(num_classes)


def forwarding(num_classes, **kwargs):
    calls.append({"num_classes": num_classes, **kwargs})
    return _head(num_classes)


def shaped(input_shape, num_classes, **kwargs):
    calls.append({"input_shape": input_shape, "num_classes": num_classes, **kwargs})
    return _head(num_classes)


def keyword_shaped(*, input_shape, num_classes):
    calls.append({"input_shape": input_shape, "num_classes": num_classes})
    return _head(num_classes)


class Unreadable:
    __signature__ = "unreadable"  # inspect.signature raises TypeError on it

    def __call__(self, **kwargs):
        calls.append(kwargs)
        return _head(kwargs["num_classes"])


unreadable = Unreadable()

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


def activated(input_shape, num_classes, activation="relu"):
    channels, height, width = input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(channels * height * width, 16), ACTIVATIONS[activation](),
        nn.Linear(16, num_classes),
    )
"""


@pytest.fixture
def zoo_module(tmp_path, monkeypatch):
    """`zoomodels.py` in a folder on sys.path, as the working directory would be."""
    with importable_module(tmp_path, monkeypatch, "zoomodels", MODULE) as folder:
        yield folder


@pytest.mark.parametrize(
    "builder, received",
    [
        ("plain", {"num_classes": 10, "width": 3}),
        ("forwarding", {"num_classes": 10, "width": 3}),  # **kwargs does not name input_shape
        ("shaped", {"input_shape": (3, 8, 8), "num_classes": 10, "width": 3}),
        ("unreadable", {"num_classes": 10, "width": 3}),  # no signature: no input_shape
    ],
)
def test_a_builder_gets_input_shape_only_when_its_signature_names_it(zoo_module, builder, received):
    import zoomodels

    build_model(TrialConfig(model=f"zoomodels:{builder}", model_args={"width": 3}), (3, 8, 8), 10)
    assert zoomodels.calls == [received]


def test_a_keyword_only_input_shape_is_named_too(zoo_module):
    import zoomodels

    build_model(TrialConfig(model="zoomodels:keyword_shaped"), [3, 8, 8], 10)
    assert zoomodels.calls == [{"input_shape": (3, 8, 8), "num_classes": 10}]


def test_the_built_in_builders_name_input_shape():
    for name, family in FAMILIES.items():
        assert names_input_shape(load_factory(family.builder)), name


def _logits(trial: TrialConfig) -> torch.nn.Module:
    model = build_model(trial, (3, 32, 32), 10)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and logits.dtype == torch.float32
    return model


def test_torchvisions_resnet18_builds_as_it_is():
    from torchvision.models import ResNet

    model = _logits(TrialConfig(model="torchvision.models:resnet18"))
    assert isinstance(model, ResNet) and model.fc.out_features == 10


def test_timms_create_model_builds_the_model_it_names():
    pytest.importorskip("timm")
    model = _logits(TrialConfig(model="timm:create_model", model_args={"model_name": "resnet18"}))
    assert model.pretrained_cfg["architecture"] == "resnet18"
    assert model.get_classifier().out_features == 10


def test_a_string_model_arg_is_set_checked_searched_and_exported():
    pytest.importorskip("timm")
    overrides = ["trial.model=timm:create_model", "trial.model_args.model_name=resnet18"]
    config = load_config(REPO / "configs" / "grid.yaml", overrides)
    assert config.trial.model_args == {"model_name": "resnet18"}
    check_own_models(config, (3, 32, 32), 10)  # builds it for real: a wrong name raises

    searched = load_config(
        REPO / "configs" / "grid.yaml",
        [*overrides, "search.grid={model_args.model_name: [resnet18, resnet34], seed: [0]}"],
    )
    names = [trial.model_args["model_name"] for trial in searched.own_models()]
    assert names == ["resnet18", "resnet18", "resnet34"]
    study = optuna_space(searched)["model_args/model_name"]
    assert study.choices == ("resnet18", "resnet34")
    row = flat_settings({"lr": 0.001, "model_args": {"model_name": "resnet34"}})
    assert row == {"lr": 0.001, "model_args.model_name": "resnet34"}


def _zoo_grid(results: Path, name: str, *sets: str) -> list[dict]:
    """A smoke grid on synthetic data with `--set` items `sets`: its trials, once it exits 0."""
    args = ("--smoke", "--no-dashboard", "--results-dir", str(results), "--name", name)
    # A ResNet-18 on a CPU: a smaller slice than the smoke's, to keep the suite quick.
    small = ("data.train_subset=200", "data.val_size=100", "data.test_subset=100")
    sets = [word for item in (*small, *sets) for word in ("--set", item)]
    proc = run_script("tuning/run_grid.py", *args, *sets, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = pq.read_table(results / name / "trials.parquet").to_pylist()
    assert len(trials) == 2 and {row["status"] for row in trials} == {"completed"}
    return trials


@pytest.mark.slow
def test_torchvisions_resnet18_trains_through_the_grid(tmp_path):
    trials = _zoo_grid(tmp_path, "resnet", "trial.model=torchvision.models:resnet18")
    assert {row["model"] for row in trials} == {"torchvision.models:resnet18"}


@pytest.mark.slow
def test_timms_resnet18_trains_through_the_grid(tmp_path):
    pytest.importorskip("timm")
    trials = _zoo_grid(
        tmp_path,
        "timm",
        "trial.model=timm:create_model",
        "trial.model_args.model_name=resnet18",
    )
    assert {row["model_args.model_name"] for row in trials} == {"resnet18"}
    epochs = pq.read_table(tmp_path / "timm" / "epochs.parquet").to_pylist()
    assert len(epochs) == 4 and {row["model_args.model_name"] for row in epochs} == {"resnet18"}


@pytest.mark.slow
def test_a_searched_string_model_arg_reaches_the_tables_the_study_and_the_report(zoo_module):
    results = zoo_module / "results"
    command = script_command(
        "tuning/run_grid.py",
        *("--smoke", "--no-dashboard", "--results-dir", str(results), "--name", "act"),
        *("--set", "trial.model=zoomodels:activated"),
        *("--set", "search.grid={model_args.activation: [relu, gelu], seed: [0]}"),
    )
    command["cwd"] = zoo_module  # run beside the module, as a user does
    proc = subprocess.run(**command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = results / "act"
    trials = pq.read_table(run / "trials.parquet").to_pylist()
    assert sorted(row["model_args.activation"] for row in trials) == ["gelu", "relu"]
    assert {row["status"] for row in trials} == {"completed"}
    epochs = pq.read_table(run / "epochs.parquet").to_pylist()
    assert {row["model_args.activation"] for row in epochs} == {"gelu", "relu"}
    study = optuna.load_study(study_name="act", storage=f"sqlite:///{run / 'study.db'}")
    assert sorted(t.params["model_args/activation"] for t in study.trials) == ["gelu", "relu"]
    report = (run / "report.md").read_text()
    assert "model_args.activation" in report and "| gelu |" in report
