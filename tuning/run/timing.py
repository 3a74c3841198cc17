"""Where a run's wall time goes: the driver's phases and when each trial was training."""

from __future__ import annotations

import time
from contextlib import contextmanager

from ray import tune


class Phases(dict):
    """Seconds per named phase of the driver, in the order they ran."""

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - start, 3)

    def line(self) -> str:
        """E.g. "data load 1.2 s, ray start 4.1 s, ..." for the console."""
        return ", ".join(f"{name.replace('_', ' ')} {s:.1f} s" for name, s in self.items())


class TrainingSpans(tune.Callback):
    """When each trial trained, on the driver's clock, in seconds since Tune's fit began: from
    the start of its first epoch to the arrival of its last result. The fit's time outside
    every span is Ray's and Tune's own: actors starting (process, imports, the data's arrival,
    the model), results and checkpoints handled, actors stopping."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.spans: dict[str, list[float]] = {}

    def setup(self, **info) -> None:
        self.began = time.monotonic()  # Tune calls this as the fit starts

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        now = time.monotonic() - self.began
        if trial.trial_id not in self.spans:
            self.spans[trial.trial_id] = [round(now - result["time_this_iter_s"], 3), 0.0]
        self.spans[trial.trial_id][1] = round(now, 3)


def covered_s(spans: list[list[float]]) -> float:
    """Seconds inside at least one of the (begin, end) spans."""
    total, reached = 0.0, float("-inf")
    for begin, end in sorted(spans):
        if end > reached:
            total += end - max(begin, reached)
            reached = end
    return total
