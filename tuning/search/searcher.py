"""Optuna's sampler as a Tune searcher, on public interfaces only: Tune's `Searcher` API and
Optuna's ask-and-tell.

Each Tune trial is a trial of the run's study (`study.db`): asked when Tune wants a
configuration, its metric reported at every epoch, told at its end with the state its
`Outcome` maps to (a trial a scheduler stopped is PRUNED, not COMPLETE level with trials that
trained their whole budget). With `rungs` (successive halving, tuning/search/halving.py) the
searcher also sets each trial's budget: a promotion, the first point at the full budget, or a
new configuration at the first rung, its warm-up scaled to keep its share of the run; a trial
that finished a rung below the full budget is PRUNED there. A trial an interruption ended
(FAIL) that a resumed run continues goes on as a new study trial with the same parameters,
marked with the one it resumes.
"""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from ray.tune.search import Searcher

from trainable.schedules import warmup_for
from tuning.config.keys import (
    EPOCH,
    PARAM_SEPARATOR,
    PROMOTES_MARK,
    RESUMES_MARK,
    TRAINING_ITERATION,
    TUNE_TRIAL_MARK,
    nested,
)
from tuning.results.outcome import Outcome, epoch_budget, trial_outcome
from tuning.search.halving import Rungs


class StudySearcher(Searcher):
    """Proposes each trial's searched settings from `study` through `space` (Optuna's parameter
    names, `/` for a nested setting) and records the trial there; `points` are asked first.
    `warmup`: the trial section's, for a rung's budget where the space does not search it."""

    warmup: float = 0.0  # a searcher pickled before it had one: its runs' trials had none

    def __init__(
        self,
        *,
        study: optuna.Study,
        space: dict[str, optuna.distributions.BaseDistribution],
        metric: str,
        mode: str,
        epochs: int,
        points: list[dict[str, Any]] = (),
        rungs: Rungs | None = None,
        warmup: float = 0.0,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.study, self.space, self.epochs, self.rungs = study, space, epochs, rungs
        self.warmup = warmup
        # Enqueued one at a time, just before their ask: a promotion's enqueue must not queue
        # behind them.
        self.points = list(points)
        self.trials: dict[str, optuna.Trial] = {}  # Tune's trial id → its running study trial
        self.reported: dict[str, int] = {}  # Tune's trial id → the last epoch reported
        # Tune's trial id → the budget `suggest` set (halving): the result Tune hands to
        # `on_trial_complete` carries no config.
        self.budgets: dict[str, int] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The space comes translated (tuning.config.space); Tune's samplers in `config` are
        # replaced by every suggestion.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any]:
        promotion = self.rungs.promotion() if self.rungs else None
        budget = self.rungs.first if self.rungs else None
        if promotion:
            budget = promotion.budget
            self.study.enqueue_trial(promotion.params, user_attrs={PROMOTES_MARK: promotion.number})
        elif self.points:
            # The first point (the config's trial; the plan gives at most this one) is the
            # configuration the user starts from: it trains the full budget at once, so that the
            # search never ends on something worse than it (cut at a short rung, a configuration
            # whose regularisation pays late would be lost).
            budget = self.epochs
            self.study.enqueue_trial(self.points.pop(0))
        trial = self.study.ask(self.space)
        trial.set_user_attr(TUNE_TRIAL_MARK, trial_id)
        self.trials[trial_id] = trial
        config = nested(trial.params, sep=PARAM_SEPARATOR)
        if self.rungs:
            config["epochs"] = self.budgets[trial_id] = budget
            warmup = config.get("warmup", self.warmup)
            if warmup and budget != self.epochs:
                config["warmup"] = warmup_for(self.epochs, warmup, budget)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self._report(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.trials:
            return
        result = result or {}
        self._report(trial_id, result)  # Tune hands the last epoch's result to this call alone
        trial = self.trials.pop(trial_id)
        self.reported.pop(trial_id, None)
        budget = self.budgets.pop(trial_id, None) or epoch_budget(
            result.get("config", {}), self.epochs
        )
        outcome = trial_outcome(
            error=error,
            diverged=bool(result.get("diverged")),
            epochs=result.get(EPOCH, 0),
            budget=budget,
        )
        state = optuna.trial.TrialState[outcome.study_state]
        if self.rungs and outcome in (Outcome.COMPLETED, Outcome.DIVERGED):
            self.rungs.record(trial.number, trial.params, budget, result.get(self.metric))
            if budget < self.epochs:  # a rung below the full budget: TPE ranks it by its step
                state = optuna.trial.TrialState.PRUNED
        value = result.get(self.metric) if state == optuna.trial.TrialState.COMPLETE else None
        self.study.tell(trial, value, state=state, skip_if_finished=True)

    def _report(self, trial_id: str, result: dict) -> None:
        step, value = result.get(TRAINING_ITERATION), result.get(self.metric)
        if trial_id not in self.trials or value is None or step is None:
            return
        if step != self.reported.get(trial_id):
            self.trials[trial_id].report(value, step)
            self.reported[trial_id] = step

    def save(self, checkpoint_path: str) -> None:
        # The study itself is in study.db; its storage pickles no path (tuning.search.study).
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.__dict__, file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.__dict__.update(pickle.load(file))
        self.continue_interrupted()

    def continue_interrupted(self) -> None:
        """Each trial Tune will continue whose study trial the interruption ended goes on as a
        new study trial, with the same parameters."""
        finished = {
            t.number for t in self.study.get_trials(deepcopy=False) if t.state.is_finished()
        }
        for trial_id, trial in list(self.trials.items()):
            if trial.number in finished:
                self.study.enqueue_trial(trial.params, user_attrs={RESUMES_MARK: trial.number})
                self.trials[trial_id] = self.study.ask(self.space)
                self.trials[trial_id].set_user_attr(TUNE_TRIAL_MARK, trial_id)
