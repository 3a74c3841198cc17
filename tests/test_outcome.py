"""How a trial ended: one decision, one vocabulary, and the study state each word maps to."""

import optuna
import pytest

from tuning.results.outcome import Outcome, epoch_budget, trial_outcome

State = optuna.trial.TrialState
ENDED = dict(error=False, diverged=False, interrupted=False)


@pytest.mark.parametrize(
    "facts, outcome, state",
    [
        ({"epochs": 5}, Outcome.COMPLETED, State.COMPLETE),
        ({"epochs": 2}, Outcome.EARLY_STOPPED, State.PRUNED),  # a scheduler stopped it
        ({"epochs": 0}, Outcome.EARLY_STOPPED, State.PRUNED),  # cut off before its first epoch
        ({"epochs": 2, "diverged": True}, Outcome.DIVERGED, State.COMPLETE),  # it ended itself
        ({"epochs": 5, "error": True}, Outcome.ERROR, State.FAIL),  # an error outranks epochs
        ({"epochs": 2, "interrupted": True}, Outcome.INTERRUPTED, State.FAIL),
        ({"epochs": 5, "interrupted": True}, Outcome.COMPLETED, State.COMPLETE),  # done before
    ],
)
def test_how_a_trial_ended(facts, outcome, state):
    assert trial_outcome(**{**ENDED, **facts, "budget": 5}) is outcome
    assert State[outcome.study_state] == state


def test_only_trials_that_ended_with_a_value_teach_a_search():
    assert {o for o in Outcome if o.has_value} == {
        Outcome.COMPLETED,
        Outcome.EARLY_STOPPED,
        Outcome.DIVERGED,
    }


def test_the_words_are_the_tables_words():
    assert [str(o) for o in Outcome] == [
        "completed",
        "early_stopped",
        "diverged",
        "interrupted",
        "error",
    ]
    assert f"{Outcome.EARLY_STOPPED}" == "early_stopped"  # formatted as the word, not the name


def test_a_trial_searched_over_epochs_has_its_own_budget():
    assert epoch_budget({"epochs": 3}, default=10) == 3
    assert epoch_budget({}, default=10) == 10
