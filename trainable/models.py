"""Models a trial can train, built from its config."""

from __future__ import annotations

from torch import nn


def build_model(config: dict, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The network `config["model"]` names, sized for `image_shape` (C, H, W) inputs."""
    if config["model"] == "mlp":
        channels, height, width = image_shape
        # The original experiment's network, exactly: one hidden ReLU layer.
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, config["hidden"]),
            nn.ReLU(),
            nn.Linear(config["hidden"], num_classes),
        )
    raise ValueError(f"unknown model {config['model']!r}")
