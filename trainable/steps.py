"""A training step: the MLP's hand-written one where it is exact, autograd for everything else."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainable.augment import Mix
from trainable.mlp_step import MLPStep

Step = Callable[[torch.Tensor, torch.Tensor, Mix | None], tuple[torch.Tensor, torch.Tensor]]


class AutogradStep:
    """Forward in `autocast`, cross-entropy with label smoothing (weighted between the two
    labels of a mixed batch), backward, optimiser step."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        smoothing: float,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.model, self.optimizer = model, optimizer
        self.smoothing, self.autocast = smoothing, autocast

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on a batch; returns its mean loss and its logits."""
        with self.autocast():
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
            if mix is not None:
                partner = F.cross_entropy(logits, mix.partner, label_smoothing=self.smoothing)
                loss = torch.lerp(loss, partner, 1 - mix.weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits


def make_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    smoothing: float,
    autocast: Callable[[], contextlib.AbstractContextManager] | None,
) -> Step:
    """The MLP's hand-written step for a network it computes exactly in float32, else autograd."""
    if autocast is None and MLPStep.fits(model):
        return MLPStep(model, optimizer, smoothing)
    return AutogradStep(model, optimizer, smoothing, autocast or contextlib.nullcontext)
