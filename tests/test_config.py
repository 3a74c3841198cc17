from pathlib import Path

import pytest
import yaml

from tuning.config import ConfigError, ExperimentConfig, load_config, smoke_overrides

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    config = load_config(path)
    assert config.name == path.stem
    assert config.trial.epochs >= 1 and (config.search.grid or config.search.space)


def settings(raw: dict, prefix: str = ""):
    """Each setting a YAML mapping gives, by dotted key (a search's grid and space whole)."""
    for key, value in raw.items():
        if isinstance(value, dict) and key not in ("grid", "space", "model_args"):
            yield from settings(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_a_config_holds_only_what_differs_from_the_defaults(path):
    defaults = ExperimentConfig().model_dump()
    same = []
    for key, value in settings(yaml.safe_load(path.read_text())):
        default = defaults
        for part in key.split("."):
            default = default[part]
        # The kind names what the file is; the scheduler's default depends on the search's.
        if value == default and key not in ("search.kind", "scheduler.kind"):
            same.append(key)
    assert same == [], f"{path.name} repeats the defaults of {same}: remove them"


def test_grid_config_is_the_original_experiment():
    config = load_config(CONFIGS[0].parent / "grid.yaml")
    assert config.search.grid == {"lr": [0.001, 0.0001, 0.01], "seed": [0, 1, 2]}
    assert (config.trial.epochs, config.trial.batch_size, config.trial.hidden) == (5, 64, 128)
    original = load_config(CONFIGS[0].parent / "grid-original.yaml")
    assert (original.trial.normalize, original.data.val_size) == ("none", 0)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, expected",
    [
        ("trial: {lr: 0}", "trial.lr"),
        ("trial: {lr: -0.1}", "greater than 0"),
        ("trial: {batch_size: 0}", "trial.batch_size"),
        ("trial: {epochs: 0}", "trial.epochs"),
        ("trial: {lr: fast}", "trial.lr"),
        ("trial: {lrr: 0.1}", "trial.lrr: unknown key"),
        ("bogus: 1", "bogus: unknown key"),
        ("search: {grid: {lr: []}}", "empty list"),
        ("search: {grid: {nesterov: [true]}}", "'nesterov' is not a trial parameter"),
        ("search: {grid: {lr: [0.1, -1]}}", "greater than 0"),
        ("data: {val_size: -1}", "data.val_size"),
        ("data: {val_size: 0}", "needs a validation split"),
        ("resources: {gpus_per_trial: -1}", "resources.gpus_per_trial"),
        ("trial: [1, 2]", "trial"),
        ("- a\n- b", "must be a mapping"),
        ("trial: {lr: [unclosed", "not valid YAML"),
        ("trial: {model: resnet}", "trial.model"),
        ("trial: {augment: rotate}", "trial.augment"),
        ("trial: {schedule: step}", "trial.schedule"),
        ("trial: {dropout: 1}", "trial.dropout"),
        ("trial: {label_smoothing: -0.1}", "trial.label_smoothing"),
        ("trial: {cutout: -4}", "trial.cutout"),
        ("trial: {epochs: 4, warmup: 4}", "warm-up of 4.0 epochs does not end before"),
        ("search: {grid: {epochs: [2, 8]}}\ntrial: {warmup: 3}", "the run's 2 epochs"),
        ("search: {kind: optuna, space: {lr: {uniform: [0.1, 0.2]}}, sampler: cma}", "sampler"),
        (
            "search: {kind: optuna, space: {lr: {uniform: [0.1, 0.2]}}, sampler: gp,\n"
            "  tpe: {multivariate: false}}",
            "search.tpe sets up TPE, but search.sampler is gp",
        ),
        (
            "search: {grid: {width: [16, 32]}}",
            "search.grid.width only affects model airbench or cnn",
        ),
        (
            "trial: {model: cnn}\nsearch: {kind: optuna, space: {depth: {choice: [1, 2]}}}",
            "search.space.depth only affects model mlp",
        ),
    ],
)
def test_bad_values_are_rejected_with_the_key_named(tmp_path, text, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert expected in str(err.value)
    assert "exp.yaml" in str(err.value)


def test_a_family_field_is_searchable_where_the_search_builds_that_family(tmp_path):
    text = "search: {grid: {model: [mlp, cnn], width: [16, 32], hidden: [64]}}"
    assert load_config(write(tmp_path, text)).search.grid["width"] == [16, 32]


def test_a_check_across_sections_does_not_echo_the_whole_config(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "search: {grid: {dropout: [0.1]}}\ntrial: {model: cnn}"))
    assert "set trial.model: mlp" in str(err.value)
    assert "got {" not in str(err.value)


def test_a_run_folders_config_from_before_startup_trials_moved_still_loads(tmp_path):
    text = "search: {kind: optuna, space: {lr: {uniform: [0.1, 0.2]}}, tpe: {startup_trials: 4}}"
    search = load_config(write(tmp_path, text)).search
    assert (search.sampler, search.startup_trials) == ("tpe", 4)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_take_dotted_keys_and_yaml_values(tmp_path):
    config = load_config(
        write(tmp_path, "trial: {lr: 0.1}"),
        ["trial.lr=0.5", "search.grid.seed=[0, 1]", "data.dir=/x"],
    )
    assert config.trial.lr == 0.5
    assert config.search.grid == {"seed": [0, 1]}
    assert config.data.dir == "/x"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trial.lrr=0.1", "'lrr' is not a key of trial"),
        ("nothing.here=1", "'nothing' is not a key of the top level"),
        ("trial=3", "is a section"),
        ("trial.lr", "KEY=VALUE"),
        ("trial.lr=-1", "greater than 0"),
    ],
)
def test_bad_overrides_are_refused(tmp_path, override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, ""), [override])


def test_grid_values_are_coerced_like_the_trial_field(tmp_path):
    config = load_config(write(tmp_path, "search: {grid: {lr: [1, '0.5']}}"))
    assert config.search.grid["lr"] == [1.0, 0.5]
    assert all(isinstance(v, float) for v in config.search.grid["lr"])


def test_smoke_keeps_two_trials_and_two_epochs_and_yields_to_set():
    path = CONFIGS[0].parent / "grid.yaml"
    items = smoke_overrides(load_config(path), synthetic=True)
    config = load_config(path, items)
    assert config.search.grid == {"lr": [0.001, 0.0001], "seed": [0]}
    assert config.trial.epochs == 2
    assert config.data.source == "synthetic"
    assert load_config(path, [*items, "trial.epochs=4"]).trial.epochs == 4
