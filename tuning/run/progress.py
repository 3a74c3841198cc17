"""The console while a run trains: a compact live view in place of Tune's own output.

On a terminal, a few lines redrawn in place: the run's state (elapsed, trials done, stopped and
failed, the best so far, an estimate of the rest) and each running trial's epoch and latest
metric. Elsewhere (a pipe, a log file, CI) the state as a plain line every `interval_s`. On
both, one line per finished trial.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from ray import tune

from tuning.config import ExperimentConfig
from tuning.config.keys import EPOCH, get_dotted
from tuning.results.outcome import Outcome, epoch_budget, trial_outcome

PLAIN_INTERVAL_S = 30.0  # a plain line this often when not on a terminal
LIVE_INTERVAL_S = 1.0  # redraws on a terminal


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return (
        f"{minutes}:{secs:02d}"
        if minutes < 60
        else f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"
    )


@dataclass
class TrialView:
    label: str  # the trial's short id and searched settings
    budget: int  # epochs it may train
    epoch: int = 0
    value: float | None = None  # its latest metric


class Progress(tune.Callback):
    """A Tune callback that draws the run's progress on standard output.

    `searched`: the settings that differ between trials, shown beside each trial's id;
    `time_budget_s`: where the search stops starting trials, which caps the estimate. Tune
    pickles its callbacks with the run (a resume brings them back), so everything of one
    process's drawing is made in `setup`.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        epochs: int,
        searched: list[str],
        time_budget_s: float | None = None,
        interval_s: float | None = None,  # None: by whether standard output is a terminal
    ) -> None:
        self.metric, self.mode, self.epochs, self.searched = metric, mode, epochs, searched
        self.time_budget_s, self.interval_s = time_budget_s, interval_s

    @classmethod
    def for_config(cls, config: ExperimentConfig) -> Progress:
        return cls(
            config.metric,
            config.mode,
            config.trial.epochs,
            searched=config.search.keys,
            time_budget_s=config.search.time_budget_s,
        )

    def setup(self, total_num_samples: int | None = None, **info) -> None:
        self.stream = sys.stdout
        self.live = self.stream.isatty()
        default = LIVE_INTERVAL_S if self.live else PLAIN_INTERVAL_S
        self.refresh_s = default if self.interval_s is None else self.interval_s
        self.planned = total_num_samples or 0
        self.started = time.monotonic()
        self.first_result: float | None = None
        self.running: dict[str, TrialView] = {}
        self.counts = dict.fromkeys((o for o in Outcome if o != Outcome.INTERRUPTED), 0)
        self.started_trials = 0
        self.ended_before: int | None = None  # trials a resumed run finished in earlier processes
        self.epochs_done = 0
        self.best: tuple[float, str] | None = None
        self.drawn = 0  # lines of the live view on screen
        self.last_draw = 0.0

    def label(self, trial) -> str:
        shown = []
        for key in self.searched:
            node = get_dotted(trial.config, key)
            shown.append(f"{key}={node:.3g}" if isinstance(node, float) else f"{key}={node}")
        return f"{trial.trial_id} " + " ".join(shown)

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self.ended_before is not None:
            return
        # The first step: a resumed run's trials that ended in earlier processes.
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        self.ended_before = len(ended)
        for trial in ended:
            self.consider((trial.last_result or {}).get(self.metric), trial.trial_id)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started_trials += 1
        budget = epoch_budget(trial.config, self.epochs)
        self.running[trial.trial_id] = TrialView(self.label(trial), budget)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        view = self.running.get(trial.trial_id)
        if view is None:  # a resumed run: the trial started before this process
            view = self.running[trial.trial_id] = TrialView(self.label(trial), self.epochs)
        now = time.monotonic()
        self.first_result = self.first_result or now
        if result.get(EPOCH, 0) > view.epoch:
            self.epochs_done += result[EPOCH] - view.epoch
        view.epoch, view.value = result.get(EPOCH, view.epoch), result.get(self.metric)
        self.consider(view.value, trial.trial_id)
        self.refresh()

    def consider(self, value: float | None, trial_id: str) -> None:
        """Keep `value` as the best so far if it beats it."""
        if value is not None and value == value:  # not NaN
            better = self.best is None or (
                value > self.best[0] if self.mode == "max" else value < self.best[0]
            )
            if better:
                self.best = (value, trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        view = self.running.pop(trial.trial_id, None) or TrialView(self.label(trial), self.epochs)
        last = trial.last_result or {}
        outcome = trial_outcome(
            error=False,
            diverged=bool(last.get("diverged")),
            epochs=view.epoch,
            budget=view.budget,
        )
        self.counts[outcome] += 1
        value = "—" if view.value is None else f"{view.value:.4f}"
        self.say(
            f"{outcome!s:>13}  {view.label}  {self.metric} {value} after "
            f"{view.epoch}/{view.budget} epochs"
        )

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        view = self.running.pop(trial.trial_id, None) or TrialView(self.label(trial), self.epochs)
        self.counts[Outcome.ERROR] += 1
        self.say(
            f"{Outcome.ERROR!s:>13}  {view.label}  after {view.epoch} epochs: see {trial.path}"
        )

    def on_step_end(self, iteration, trials, **info) -> None:
        self.refresh()

    def on_experiment_end(self, trials, **info) -> None:
        self.clear()
        self.stream.write(self.state(final=True) + "\n")
        self.stream.flush()

    def say(self, line: str) -> None:
        """A line that stays: above the live view, which is drawn again under it."""
        self.clear()
        self.stream.write(line + "\n")
        self.stream.flush()
        if self.live:
            self.draw()

    def refresh(self) -> None:
        if time.monotonic() - self.last_draw < self.refresh_s:
            return
        if self.live:
            self.clear()
            self.draw()
        else:
            self.stream.write(self.state() + "\n")
            self.stream.flush()
            self.last_draw = time.monotonic()

    def state(self, final: bool = False) -> str:
        """One line: elapsed, trials done, the best so far, and the estimated rest."""
        elapsed = time.monotonic() - self.started
        before = self.ended_before or 0
        done = sum(self.counts.values()) + before
        others = ", ".join(
            [f"{n} {what}" for what, n in self.counts.items() if n and what != Outcome.COMPLETED]
            + ([f"{before} before this resume"] if before else [])
        )
        parts = [
            f"[{clock(elapsed)}]",
            f"{done}/{self.planned} trials done" + (f" ({others})" if others else ""),
            f"{len(self.running)} running",
        ]
        if self.best is not None:
            parts.append(f"best {self.metric} {self.best[0]:.4f} ({self.best[1]})")
        if not final and (left := self.estimate_left(elapsed)) is not None:
            parts.append(f"about {clock(left)} left")
        return "  ".join(parts)

    def estimate_left(self, elapsed: float) -> float | None:
        """Seconds until the last trial ends, at the epochs per second seen so far: every
        planned trial trains its full budget (an upper bound where a scheduler stops some)."""
        if not self.first_result or not self.epochs_done:
            return None
        rate = self.epochs_done / max(time.monotonic() - self.first_result, 1e-9)
        unstarted = max(self.planned - self.started_trials - (self.ended_before or 0), 0)
        epochs_left = unstarted * self.epochs + sum(
            v.budget - v.epoch for v in self.running.values()
        )
        left = epochs_left / rate
        if self.time_budget_s is not None:
            left = min(left, max(self.time_budget_s - elapsed, 0.0))
        return left

    def draw(self) -> None:
        lines = [self.state()] + [
            f"  {view.label}  epoch {view.epoch}/{view.budget}"
            + ("" if view.value is None else f"  {self.metric} {view.value:.4f}")
            for view in self.running.values()
        ]
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)
        self.last_draw = time.monotonic()

    def clear(self) -> None:
        if self.live and self.drawn:
            # Up to the live view's first line, then erase to the end of the screen.
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0
