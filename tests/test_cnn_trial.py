"""A CNN trial with augmentation and a one-cycle schedule, end to end through Ray Tune."""

import pytest

from tests.conftest import REPO
from trainable.data import load_dataset
from tuning.config import ExperimentConfig, load_config, smoke_overrides
from tuning.results.tune_logs import build_tables
from tuning.run.tuner import judge_best, run_tuner
from tuning.search.plan import build_plan


@pytest.mark.slow
def test_cnn_smoke_search_through_ray(ray_session, tmp_path):
    config = ExperimentConfig.model_validate(
        {
            "data": {
                "source": "synthetic",
                "train_subset": 600,
                "val_size": 200,
                "test_subset": 200,
            },
            "trial": {
                "model": "cnn",
                "width": 8,
                "epochs": 2,
                "batch_size": 100,
                "optimizer": "sgd",
                "lr": 0.05,
                "schedule": "onecycle",
                "warmup": 0.5,
                "augment": "crop_flip",
                "cutout": 4,
                "label_smoothing": 0.1,
            },
            "search": {
                "kind": "optuna",
                "num_samples": 2,
                "max_concurrent": 2,
                "space": {
                    "width": {"choice": [4, 8]},
                    "augment": {"choice": ["flip", "crop_flip"]},
                },
            },
            "scheduler": {"kind": "fifo"},
        }
    )
    data = load_dataset(config.data)
    results = run_tuner(config, data, tmp_path, build_plan(config, tmp_path))
    assert len(results) == 2 and not results.errors
    epochs, trials = build_tables(results, config)
    assert epochs.num_rows == 4
    assert set(trials.column("model").to_pylist()) == {"cnn"}
    assert {"width", "augment", "cutout", "warmup", "label_smoothing"} <= set(trials.column_names)
    best, test_acc = judge_best(results, config, data)
    assert best.config["model"] == "cnn" and 0 <= test_acc <= 1


@pytest.mark.parametrize("name", ["optuna-cnn.yaml", "optuna-mlp.yaml"])
def test_family_configs_start_inside_their_space(name):
    config = load_config(REPO / "configs" / name)
    # The first point tried is the trial defaults, inside the space.
    for key, dist in config.search.space.items():
        assert dist.nearest(getattr(config.trial, key)) == getattr(config.trial, key), key


def test_the_cnn_config_starts_from_the_airbench_recipe_and_searches_around_it():
    config = load_config(REPO / "configs" / "optuna-cnn.yaml")
    trial = config.trial
    assert trial.model == "airbench" and trial.optimizer == "sgd" and trial.momentum < 0.9
    assert trial.label_smoothing == 0.2 and trial.crop_padding == 2
    assert trial.tta == "flip_translate"
    assert config.scheduler.kind == "halving" and config.scheduler.rungs(trial.epochs)
    assert {"lr", "momentum", "weight_decay", "label_smoothing", "width"} <= set(
        config.search.space
    )


def test_the_mlp_config_screens_short_and_trains_its_choice_long():
    config = load_config(REPO / "configs" / "optuna-mlp.yaml")
    trial = config.trial
    assert trial.model == "mlp" and trial.depth == 1  # the original's network, wider
    assert config.scheduler.kind == "halving" and config.scheduler.rungs(trial.epochs)
    assert config.final_epochs > trial.epochs and config.final.seeds >= 2
    assert trial.mixup > 0 and trial.tta == "flip_translate"


@pytest.mark.parametrize("name", ["optuna-cnn.yaml", "optuna-mlp.yaml"])
def test_family_configs_shrink_for_smoke_runs(name):
    path = REPO / "configs" / name
    smoke = load_config(path, smoke_overrides(load_config(path), synthetic=True))
    assert smoke.trial.epochs == 2 and smoke.trial.warmup < 2
