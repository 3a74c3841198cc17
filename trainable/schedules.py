"""Learning rate as a function of training progress, stepped every batch."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "onecycle")


def lr_at(config: dict, progress: float) -> float:
    """The learning rate `progress` epochs into a run of `config["epochs"]`.

    Every schedule first warms up linearly from 0 to `lr` over `warmup` epochs (0: none), then
    - constant: stays at `lr`;
    - cosine: follows half a cosine from `lr` to 0 at the end of the run;
    - onecycle: falls linearly from `lr` to 0 at the end of the run (the triangular schedule
      of Smith's one-cycle policy and the fast CIFAR-10 trainers).
    """
    lr, epochs = config["lr"], config["epochs"]
    warmup, kind = config.get("warmup", 0.0), config["schedule"]
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    if progress < warmup:
        return lr * progress / warmup
    if kind == "constant":
        return lr
    # Fraction of the post-warm-up part done, clamped: a resumed or extended run stays at 0.
    done = min(1.0, (progress - warmup) / max(epochs - warmup, 1e-9))
    if kind == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * done))
    return lr * (1 - done)
