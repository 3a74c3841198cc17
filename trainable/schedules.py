"""Learning rate as a function of training progress, stepped every batch."""

from __future__ import annotations

import math

from trainable.settings import TrialConfig


def lr_at(trial: TrialConfig, progress: float) -> float:
    """The learning rate `progress` epochs into a run of `trial.epochs`.

    Every schedule first warms up linearly from `lr_start`·`lr` to `lr` over `warmup` epochs
    (0: none), then
    - constant: stays at `lr`;
    - cosine: follows half a cosine from `lr` to `lr_end`·`lr` at the end of the run;
    - onecycle: falls linearly from `lr` to `lr_end`·`lr` at the end of the run (the triangular
      schedule of Smith's one-cycle policy and the fast CIFAR-10 trainers).
    """
    lr, epochs, warmup = trial.lr, trial.epochs, trial.warmup
    if progress < warmup:
        return lr * (progress + trial.lr_start * (warmup - progress)) / warmup
    if trial.schedule == "constant":
        return lr
    # Fraction of the post-warm-up part done, clamped: a resumed or extended run stays at the end.
    done = min(1.0, (progress - warmup) / max(epochs - warmup, 1e-9))
    end = trial.lr_end
    if trial.schedule == "cosine":
        return lr * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * done)))
    return lr * (end + (1 - end) * (1 - done))


def warmup_for(epochs: float, warmup: float, budget: float) -> float:
    """The warm-up that keeps the share `warmup` has of an `epochs`-epoch run in a run of
    `budget` epochs: one schedule shape at every budget (halving's rungs, `final.epochs`), so a
    short run is the long one compressed, never still warming up where it is judged."""
    return warmup * budget / epochs
