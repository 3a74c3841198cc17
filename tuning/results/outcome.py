"""How a trial ended: one vocabulary, decided in one place, for the tables, the study, the
finalists, the warm start and the console."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    COMPLETED = "completed"  # trained its whole epoch budget
    EARLY_STOPPED = "early_stopped"  # a scheduler stopped it, or the search's time ran out
    DIVERGED = "diverged"  # its loss stopped being finite, which ends it: its last value stands
    INTERRUPTED = "interrupted"  # the run stopped (Ctrl-C, SIGTERM) first: a resume continues it
    ERROR = "error"  # it raised, more often than run.max_failures allowed

    def __str__(self) -> str:  # the word, in tables and on the console alike
        return self.value

    @property
    def has_value(self) -> bool:
        """Whether it ended with a last value of the metric that a search may learn from."""
        return self in (Outcome.COMPLETED, Outcome.EARLY_STOPPED, Outcome.DIVERGED)

    @property
    def study_state(self) -> str:
        """The name of Optuna's `TrialState` for it: a diverged trial is complete (its value
        stands), a stopped one pruned (TPE ranks it by how far it got), the rest failed."""
        return {
            Outcome.COMPLETED: "COMPLETE",
            Outcome.DIVERGED: "COMPLETE",
            Outcome.EARLY_STOPPED: "PRUNED",
        }.get(self, "FAIL")


def epoch_budget(trial_config: dict, default: int) -> int:
    """The epochs a trial may train: its own config's (searched or set), else the run's."""
    return int(trial_config.get("epochs", default))


def rung_reached(epochs: int, budget: int) -> int:
    """Where each trial trains a rung's budget of its own (halving): the rung its value stands
    for, its epochs when it trained its whole budget; 0 when it was stopped part-way (the
    search's time ran out), as its value is then from the middle of a schedule, comparable
    with no rung. The furthest rung ranks first: a shorter rung's value is lower anyway."""
    return epochs if epochs >= budget else 0


def trial_outcome(
    *, error: bool, diverged: bool, epochs: int, budget: int, interrupted: bool = False
) -> Outcome:
    """How a trial ended, from what it left: whether it errored or diverged, the epochs it
    trained against its budget, and whether the run was interrupted before it ended."""
    if error:
        return Outcome.ERROR
    if diverged:
        return Outcome.DIVERGED
    if epochs >= budget:
        return Outcome.COMPLETED
    return Outcome.INTERRUPTED if interrupted else Outcome.EARLY_STOPPED
