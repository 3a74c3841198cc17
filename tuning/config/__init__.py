"""Configuration: the experiment's schema, its files and `--set` overrides, the names every
room shares, the search space's translation, credentials, and the generated reference.

Imports nothing of the other rooms (see `tuning/__init__.py`)."""

from tuning.config.errors import ConfigError
from tuning.config.loading import apply_overrides, load_config, smoke_overrides
from tuning.config.schema import METRICS, Distribution, ExperimentConfig, check_own_models

__all__ = [
    "METRICS",
    "ConfigError",
    "Distribution",
    "ExperimentConfig",
    "apply_overrides",
    "check_own_models",
    "load_config",
    "smoke_overrides",
]
