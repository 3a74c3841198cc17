"""Asynchronous successive halving by retraining: which configuration a searcher proposes next,
and at what budget.

A new configuration trains the smallest budget. One that finishes a rung among the best
1/reduction_factor of that rung's finished configurations is promoted: trained again from
scratch with the next budget, so that every rung compares trials at the end of a schedule
fitted to that rung (a cosine over 1 epoch, then over 3, ...), never halfway down a longer one.
A rung promotes nobody until it holds `reduction_factor` finished trials, so no configuration
passes for arriving first (Tune's ASHA passes every first arrival). Promotions are asked for
before new configurations, the highest rung first, as in ASHA (Li et al., MLSys 2020).

Retraining costs each rung's budget in full (for 1, 3, 9 epochs: 13 epochs for a configuration
promoted to the top, where continuing from a checkpoint would cost 9), and buys what a restarted
schedule cannot: every trial, at every rung, is a complete training run of its own. (Measured:
continuing with a restarted schedule ends below retraining, most for high learning rates;
benchmarks/rank_correlation.py.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Promotion:
    """A configuration to train again: its parameters, the trial it comes from, its budget."""

    params: dict[str, Any]
    number: int  # the study trial that earned it
    budget: int


@dataclass
class Rungs:
    """Each budget's finished trials, and who has been promoted from them."""

    budgets: list[int]  # epochs, ascending; the last is the full budget
    reduction_factor: float
    maximize: bool
    finished: list[dict[int, tuple[float, dict[str, Any]]]] = field(default_factory=list)
    promoted: list[set[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.finished:
            self.finished = [{} for _ in self.budgets]
            self.promoted = [set() for _ in self.budgets]

    @property
    def first(self) -> int:
        return self.budgets[0]

    def record(self, number: int, params: dict[str, Any], budget: int, value: float | None) -> None:
        """Study trial `number` finished `budget` epochs with `value` (None or not finite: the
        worst, as for a diverged trial: it counts towards the rung but is never promoted)."""
        if budget not in self.budgets:
            return  # not one of this run's budgets (a trial of an earlier, other plan)
        if value is None or not math.isfinite(value):
            value = -math.inf if self.maximize else math.inf
        self.finished[self.budgets.index(budget)][number] = (value, params)

    def promotion(self) -> Promotion | None:
        """The next configuration to train at a higher budget, if any rung has earned one."""
        for rung in reversed(range(len(self.budgets) - 1)):
            entries = self.finished[rung]
            earned = math.floor(len(entries) / self.reduction_factor)
            best = sorted(entries, key=lambda n: entries[n][0], reverse=self.maximize)[:earned]
            for number in best:
                if number not in self.promoted[rung] and math.isfinite(entries[number][0]):
                    self.promoted[rung].add(number)
                    return Promotion(entries[number][1], number, self.budgets[rung + 1])
        return None
