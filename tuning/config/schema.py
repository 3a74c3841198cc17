"""The experiment's schema: one validated pydantic model per section, and the checks across
sections."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from trainable.data import DataConfig
from trainable.families import ModelError, check_model, readers
from trainable.settings import Strict, TrialConfig, uses_import_path
from tuning.config.credentials import MLFLOW_SECRETS, check_no_credentials
from tuning.config.errors import ConfigError
from tuning.config.keys import DOT, MODEL_ARGS


class Distribution(Strict):
    """One search dimension, written as `{kind: [arguments]}`; ranges include both ends."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    quniform: tuple[float, float, float] | None = None  # low, high, step
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k, v in self if v is not None]
        if len(given) != 1:
            kinds = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one of {kinds}, e.g. {{loguniform: [1e-4, 1e-2]}}")
        kind, args = given[0], getattr(self, given[0])
        if kind == "choice" and not args:
            raise ValueError("choice needs at least one value")
        if kind != "choice" and not args[0] < args[1]:
            raise ValueError(f"{kind} needs low < high (got {list(args)})")
        if kind == "loguniform" and args[0] <= 0:
            raise ValueError("loguniform needs low > 0")
        return self

    @property
    def kind(self) -> str:
        return next(k for k, v in self if v is not None)

    @property
    def args(self) -> Any:
        return getattr(self, self.kind)

    def nearest(self, value: Any) -> Any:
        """`value` if the distribution can draw it, else the closest value it can (the first
        choice, or the range's low end, for no value)."""
        if value is None:
            return self.values()[0]
        if self.kind == "choice":
            return value if value in self.args else self.args[0]
        return min(max(value, self.args[0]), self.args[1])

    def values(self) -> list[Any]:
        """The values a trial field must accept: the choices, or a range's ends."""
        return list(self.args) if self.kind == "choice" else list(self.args[:2])


class TPEConfig(Strict):
    """Optuna's TPE sampler (search.sampler tpe)."""

    # One joint density over all dimensions rather than one per dimension: it sees that a
    # good lr depends on the batch size and the optimiser.
    multivariate: bool = True
    # Trials still running count as bad ones while the next is proposed: two trials started
    # together are not proposed into the same spot.
    constant_liar: bool = True


class SearchConfig(Strict):
    kind: Literal["grid", "optuna", "random"] = "grid"
    grid: dict[str, list[Any]] = Field(default_factory=dict)  # kind grid: field → values to cross
    space: dict[str, Distribution] = Field(default_factory=dict)  # optuna / random: field → dist
    num_samples: int = Field(20, ge=1)  # trials to draw (optuna, random)
    max_concurrent: int | None = Field(None, ge=1)  # None: as many as the resources allow
    time_budget_s: float | None = Field(None, gt=0)  # stop starting/continuing trials after this
    seed: int = 0  # the sampler's seed: the same seed proposes the same configurations
    evaluate_trial_first: bool = True  # first try the `trial` section's point (the original's)
    # Run folders whose finished trials an Optuna search starts from (also --warm-start).
    warm_start: list[str] = Field(default_factory=list)
    # Kind optuna's proposer. gp: a Gaussian process with expected improvement (Optuna's
    # GPSampler; trials still running are accounted for), which learns more from a few dozen
    # trials; tpe: a proposal costs next to nothing at any number of trials. The default is
    # what run folders written before this setting searched with (--resume reads them).
    sampler: Literal["gp", "tpe"] = "tpe"
    startup_trials: int = Field(10, ge=0)  # random proposals before the sampler models results
    tpe: TPEConfig = Field(default_factory=TPEConfig)

    @property
    def keys(self) -> list[str]:
        """The searched settings (dotted keys), in the order the config gives them."""
        return list(self.grid or self.space)

    def values(self) -> dict[str, list[Any]]:
        """Each searched key's values a trial must accept: a grid's values, or a range's ends."""
        return {
            **{key: list(values) for key, values in self.grid.items()},
            **{key: dist.values() for key, dist in self.space.items()},
        }

    @model_validator(mode="before")
    @classmethod
    def _startup_trials_moved(cls, data: Any) -> Any:
        # Run folders written before it counted for either sampler keep it under search.tpe;
        # --resume and --warm-start read them.
        tpe = data.get("tpe") if isinstance(data, dict) else None
        if isinstance(tpe, dict) and "startup_trials" in tpe:
            tpe = dict(tpe)
            data = {"startup_trials": tpe.pop("startup_trials"), **data, "tpe": tpe}
        return data

    @field_validator("grid")
    @classmethod
    def _grid_values(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        coerced = {}
        for key, values in grid.items():
            _check_trial_key(key)
            if not values:
                raise ValueError(f"grid for '{key}' is an empty list; give at least one value")
            coerced[key] = [_trial_value(key, value) for value in values]
        return coerced

    @field_validator("space")
    @classmethod
    def _space_values(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for key, dist in space.items():
            _check_trial_key(key)
            for value in dist.values():
                _trial_value(key, value)
        return space

    @model_validator(mode="after")
    def _kind_matches(self) -> SearchConfig:
        if self.kind == "grid" and self.space:
            raise ValueError("search.space is for kind optuna or random; a grid uses search.grid")
        if self.kind != "grid" and self.grid:
            raise ValueError(f"search.grid is for kind grid; kind {self.kind} uses search.space")
        if self.warm_start and self.kind != "optuna":
            raise ValueError(
                f"search.warm_start feeds an Optuna study; kind {self.kind} has none: "
                "use kind optuna or drop warm_start"
            )
        if self.sampler == "gp" and self.tpe != TPEConfig():
            raise ValueError(
                "search.tpe sets up TPE, but search.sampler is gp: drop search.tpe or set "
                "search.sampler: tpe"
            )
        if self.kind != "grid" and not self.space:
            raise ValueError(
                f"search kind {self.kind} needs a non-empty search.space, "
                "e.g. space: {lr: {loguniform: [1e-4, 1e-2]}}"
            )
        return self


def _check_trial_key(key: str) -> None:
    if key.startswith(f"{MODEL_ARGS}{DOT}") and len(key) > len(MODEL_ARGS) + 1:
        return  # a keyword argument of a user's model: any name it takes
    if key not in TrialConfig.model_fields or key == MODEL_ARGS:
        known = ", ".join(k for k in TrialConfig.model_fields if k != MODEL_ARGS)
        raise ValueError(
            f"'{key}' is not a trial parameter (known: {known}, or {MODEL_ARGS}.<name> for a "
            "model of your own)"
        )


def _trial_value(key: str, value: Any) -> Any:
    """`value` validated and coerced as the trial field `key` would be. A user's model checks
    its own arguments when it is built (`families.check_model`)."""
    if key.startswith(f"{MODEL_ARGS}{DOT}"):
        return value
    try:
        return getattr(TrialConfig.model_validate({key: value}), key)
    except ValidationError as err:
        raise ValueError(f"value {value!r} for '{key}': {err.errors()[0]['msg']}") from None


class SchedulerConfig(Strict):
    """Early stopping, in epochs; `max_t` is always the trial's `epochs`."""

    # None: see below. halving: successive halving by retraining (tuning/search/halving.py),
    # Optuna searches only
    kind: Literal["halving", "asha", "median", "hyperband", "pbt", "fifo"] | None = None
    grace_period: int = Field(1, ge=1)  # epochs every trial gets before it can be stopped
    reduction_factor: float = Field(3, gt=1)  # halving, asha, hyperband: keep 1/factor a rung
    min_samples_required: int = Field(3, ge=1)  # median: trials needed to compare against
    perturbation_interval: int = Field(1, ge=1)  # pbt: epochs between exploit/explore steps
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # pbt: bottom part copies the top

    @property
    def retrains(self) -> bool:
        """Whether trials train rung budgets of their own (halving): a rung's value then ranks
        below any value of a larger budget, whatever the numbers."""
        return self.kind == "halving"

    def rungs(self, epochs: int) -> list[int]:
        """The epochs at which trials are compared below a budget of `epochs`: ASHA's
        milestones (grace_period × reduction_factor^k, Tune's), halving's smaller budgets
        (epochs / reduction_factor^k, down to grace_period); none for another scheduler."""
        if self.kind == "halving":
            count = int(math.log(epochs / self.grace_period) / math.log(self.reduction_factor))
            budgets = {round(epochs / self.reduction_factor**k) for k in range(1, count + 1)}
            return sorted(b for b in budgets if self.grace_period <= b < epochs)
        if self.kind != "asha":
            return []
        count = int(math.log(epochs / self.grace_period) / math.log(self.reduction_factor) + 1)
        milestones = (round(self.grace_period * self.reduction_factor**k) for k in range(count))
        return [m for m in milestones if m < epochs]


class FinalConfig(Strict):
    """Finalists: the search's best configurations trained again over fresh seeds."""

    top_k: int | None = Field(None, ge=0)  # 0: off; None: 3 for a search, 0 for a grid
    seeds: int = Field(3, ge=1)  # re-runs per finalist; a verdict needs at least 2
    # Each re-run's epochs; None: the search's full budget (trial.epochs). More lets a search
    # screen configurations at a short budget and train its choice longer, every run with its
    # schedule fitted to its own budget.
    epochs: int | None = Field(None, ge=1)


class ResourcesConfig(Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float | Literal["auto"] = "auto"  # auto: 0 without CUDA

    @field_validator("gpus_per_trial")
    @classmethod
    def _non_negative(cls, value: float | str) -> float | str:
        if value != "auto" and value < 0:
            raise ValueError("must be 'auto' or a number ≥ 0")
        return value


class RunSettings(Strict):
    max_failures: int = Field(2, ge=0)  # restarts of a crashed trial from its last checkpoint
    # Where Tune keeps trial state and checkpoints; None: the run folder. On several nodes: a
    # path every node mounts, or a URI pyarrow opens (s3://bucket/runs, gs://bucket/runs).
    storage: str | None = None
    # An MLflow tracking server or store to send the run to (http://host:5000, sqlite:///f.db,
    # a folder): one experiment named after the run, one MLflow run per trial. The `mlflow`
    # extra installs the client.
    mlflow: str | None = None

    @field_validator("storage")
    @classmethod
    def _absolute_or_uri(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value and not Path(value).is_absolute():
            raise ValueError(
                "must be an absolute path (every node resolves it alike) or a URI such as "
                "s3://bucket/runs; --storage makes a relative path absolute"
            )
        check_no_credentials(value or "")  # config.yaml and messages would hold them
        return value

    @field_validator("mlflow")
    @classmethod
    def _no_secrets(cls, value: str | None) -> str | None:
        check_no_credentials(value or "", "MLflow tracking", MLFLOW_SECRETS)
        return value


METRICS = ("val_acc", "val_loss", "train_acc", "train_loss")


class ExperimentConfig(Strict):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9._-]+$")
    metric: Literal[METRICS] = "val_acc"  # named once: used for best-trial choice and export
    mode: Literal["max", "min"] = "max"
    data: DataConfig = Field(default_factory=DataConfig)
    trial: TrialConfig = Field(default_factory=TrialConfig)
    search: SearchConfig = Field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    run: RunSettings = Field(default_factory=RunSettings)

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        if self.metric.startswith("val_") and self.data.val_size == 0:
            raise ValueError(
                f"metric '{self.metric}' needs a validation split but data.val_size is 0; "
                "set data.val_size > 0 or choose metric train_acc / train_loss"
            )
        if self.scheduler.kind is None:
            # A grid compares every point in full; a search stops weak trials (ASHA).
            self.scheduler.kind = "fifo" if self.search.kind == "grid" else "asha"
        if self.final.top_k is None:
            self.final.top_k = 0 if self.search.kind == "grid" else 3
        elif self.final.top_k and self.search.kind == "grid":
            raise ValueError(
                "final.top_k is for a search: a grid's seeds are its replicates "
                "(search.grid.seed: [0, 1, 2]); set final.top_k: 0"
            )
        epochs = max([self.trial.epochs, *self.search.grid.get("epochs", [])])
        self._check_warmup()
        self._check_family_fields()
        if self.scheduler.kind == "halving" and (
            self.search.kind != "optuna" or "epochs" in self.search.space
        ):
            raise ValueError(
                "scheduler.kind 'halving' sets each trial's epochs itself and needs Optuna's "
                "searcher to promote trials: use search.kind 'optuna' without 'epochs' in "
                "search.space, or scheduler.kind 'asha'"
            )
        if self.scheduler.kind != "fifo" and self.scheduler.grace_period >= epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) must be below "
                f"trial.epochs ({epochs}), or no trial can be stopped early"
            )
        return self

    @property
    def final_epochs(self) -> int:
        """The finalists' epoch budget: final.epochs, else the search's full budget."""
        return self.final.epochs or self.trial.epochs

    def models(self) -> set[str]:
        """Every model a trial of this search can build."""
        if "model" in self.search.grid:
            return set(self.search.grid["model"])
        if "model" in self.search.space:
            return set(self.search.space["model"].values())
        return {self.trial.model}

    def own_models(self) -> list[TrialConfig]:
        """A trial's settings for each user's model the search can build, and for each value a
        searched `model_args` entry can take (a range: its ends), the rest as in `trial`."""
        points = []
        for model in sorted(m for m in self.models() if uses_import_path(m)):
            base = self.trial.model_copy(update={"model": model})
            points.append(base)
            for key, values in self.search.values().items():
                if key.startswith(f"{MODEL_ARGS}{DOT}"):
                    name = key.split(DOT, 1)[1]
                    points += [
                        base.model_copy(update={MODEL_ARGS: {**base.model_args, name: value}})
                        for value in values
                    ]
        return points

    def _check_family_fields(self) -> None:
        """Every searched field must matter to some model the search can build."""
        where = "search.grid" if self.search.grid else "search.space"
        models = self.models()
        own = {model for model in models if uses_import_path(model)}
        built = " and ".join(sorted(models))
        for key in self.search.keys:
            families = readers(key)
            if families is None or families & models or (families == set() and own):
                continue
            needs = f"model {' or '.join(sorted(families))}" if families else "a model of your own"
            model = sorted(families)[0] if families else "'package.module:function'"
            raise ValueError(
                f"{where}.{key} only affects {needs}, but this search builds only "
                f"model {built}: remove {key} from {where}, or set trial.model: {model}"
            )
        if self.trial.model_args and not own:
            raise ValueError(
                f"trial.model_args only reach a model named by an import path, but this "
                f"search builds only model {built}: remove model_args or name your model"
            )

    def _check_warmup(self) -> None:
        """A warm-up the user wrote must end before the run does. (One a search draws may
        not, e.g. in a `--smoke` run's 2 epochs: the rate then rises for the whole run.)"""
        epochs = min([self.trial.epochs, *self.search.grid.get("epochs", [])])
        warmup = max([self.trial.warmup, *self.search.grid.get("warmup", [])])
        if warmup >= epochs:
            raise ValueError(
                f"warm-up of {warmup} epochs does not end before the run's {epochs} epochs; "
                "lower trial.warmup (or its grid values) or raise trial.epochs"
            )


def check_own_models(
    config: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """ConfigError unless every user's model the search can build maps a float batch of the
    data's shape to (N, num_classes) logits: refused before any trial starts."""
    for trial in config.own_models():
        try:
            check_model(trial, input_shape, num_classes)
        except ModelError as err:
            raise ConfigError(str(err)) from None
