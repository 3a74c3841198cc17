"""airbench's lookahead: a slow copy of the model that the training weights are pulled back to.

Every PULL_EVERY steps the slow copy moves toward the training weights by 1 - decay, and the
training weights are set to it. The decay grows with the cube of the run's progress, from 0 (the
slow copy is the model: no effect early on) to SLOW_SHARE at the last step, so late in the run
the model is an average over its last few dozen steps, which a short run's noisy end needs.
At the end of the run the model is the slow copy. Batch-norm statistics are averaged with the
weights: they belong to them.
"""

from __future__ import annotations

import torch
from torch import nn

PULL_EVERY = 5  # steps
SLOW_SHARE = 0.95**PULL_EVERY  # the slow copy's weight in each pull at the end of the run


class Lookahead:
    """The slow copy of `model`'s floating-point state (weights and running statistics)."""

    def __init__(self, model: nn.Module) -> None:
        tensors = [*model.parameters(), *model.buffers()]
        self.live = [t.detach() for t in tensors if t.is_floating_point()]  # the model's storage
        self.slow = [t.clone() for t in self.live]

    def after_step(self, steps_done: int, steps: int) -> None:
        """Pull if `steps_done` of the run's `steps` is a multiple of PULL_EVERY."""
        if steps_done % PULL_EVERY == 0:
            self.pull(steps_done / steps)

    @torch.no_grad()
    def pull(self, progress: float) -> None:
        """Move the slow copy toward the model, `progress` (0 to 1) into the run, and set the
        model to it."""
        decay = SLOW_SHARE * min(progress, 1.0) ** 3
        for slow, live in zip(self.slow, self.live, strict=True):
            slow.lerp_(live, 1 - decay)
            live.copy_(slow)

    @torch.no_grad()
    def finish(self) -> None:
        """The run is over: the model becomes the slow copy."""
        for slow, live in zip(self.slow, self.live, strict=True):
            live.copy_(slow)

    @torch.no_grad()
    def restore(self, slow: list[torch.Tensor]) -> None:
        """Set the slow copy to `slow`, as a checkpoint saved it."""
        for mine, saved in zip(self.slow, slow, strict=True):
            mine.copy_(saved)
