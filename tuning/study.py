"""Every run's trials in an Optuna study, `study.db` in the run folder, as they report.

So `optuna-dashboard sqlite:///results/<name>/study.db` shows any run while it runs, a grid's
as well as a search's, each trial with its per-epoch values. The study tells the truth about
how each trial ended: COMPLETE when it trained its whole budget (or diverged, which ends it);
PRUNED when a scheduler stopped it early or the time budget cut it off, with its intermediate
values (TPE ranks such trials below every complete one, by how far they got); FAIL when it
errored or the run was interrupted (a resumed trial continues as a new study trial).

Tune pickles the searcher, its storage included, into the run's state (`searcher-state-*.pkl`,
`tuner.pkl`). An absolute path to study.db there would make a run folder moved or copied
elsewhere resume against the old folder's study (or fail where that folder is gone): the
storage pickles no path, and opens the study of the run being resumed (`study_file`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tuning.config import Distribution, ExperimentConfig

STUDY_FILE = "study.db"
PARAM_SEPARATOR = "/"  # Tune's OptunaSearch names a nested setting by its path joined with "/"


def study_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"


# The study file a resume's unpickled storage opens; set around Tune's restore.
_STUDY_FILE: ContextVar[Path | None] = ContextVar("study_file", default=None)


@contextmanager
def study_file(path: Path) -> Iterator[None]:
    """While Tune restores a run, its pickled study storage opens `path` (the run's study.db)."""
    token = _STUDY_FILE.set(Path(path).resolve())
    try:
        yield
    finally:
        _STUDY_FILE.reset(token)


class RunStudyStorage(optuna.storages.RDBStorage):
    """SQLite storage of one run's study that pickles no path: unpickled inside
    `study_file(...)`, it opens the study.db of the run folder being resumed."""

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "url": None}

    def __setstate__(self, state: dict) -> None:
        path = _STUDY_FILE.get()
        if path is None:
            raise RuntimeError("a run's study storage was unpickled outside study_file()")
        super().__setstate__({**state, "url": f"sqlite:///{path}"})


def study_storage(path: Path) -> RunStudyStorage:
    """The storage of the study file `path`, its schema made first if the file is new."""
    return RunStudyStorage(f"sqlite:///{with_schema(path)}")


def with_schema(path: Path) -> Path:
    """`path` resolved; a new file gets Optuna's schema under a temporary name, then renamed.

    A reader that opens the file the moment it appears (optuna-dashboard, a test) finds the
    schema whole: two processes creating it at once collide ("UNIQUE constraint failed:
    alembic_version"), and the run's own would be the one to fail."""
    path = Path(path).resolve()
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        optuna.storages.RDBStorage(f"sqlite:///{temporary}").engine.dispose()
        os.replace(temporary, path)
    return path


def dashboard_command(run_dir: Path) -> str:
    return f"optuna-dashboard {study_url(run_dir)}"


def ended_state(result: dict | None, budget: int, error: bool) -> optuna.trial.TrialState:
    """How a trial ended, from its last result."""
    if error:
        return optuna.trial.TrialState.FAIL
    result = result or {}
    if result.get("diverged") or result.get("epoch", 0) >= budget:
        return optuna.trial.TrialState.COMPLETE
    return optuna.trial.TrialState.PRUNED


def to_optuna(dist: Distribution) -> optuna.distributions.BaseDistribution:
    """A search dimension as Optuna's distribution (what the dashboard plots against)."""
    low, high = dist.args[:2] if dist.kind != "choice" else (None, None)
    if dist.kind == "loguniform":
        return optuna.distributions.FloatDistribution(low, high, log=True)
    if dist.kind in ("uniform", "quniform"):
        return optuna.distributions.FloatDistribution(low, high)
    if dist.kind == "randint":
        return optuna.distributions.IntDistribution(low, high)
    return optuna.distributions.CategoricalDistribution(dist.args)


def searched_distributions(config: ExperimentConfig) -> dict[str, Any]:
    """The run's searched settings, as Optuna names and distributions."""
    found = {
        key: optuna.distributions.CategoricalDistribution(values)
        for key, values in config.search.grid.items()
    }
    found.update({key: to_optuna(dist) for key, dist in config.search.space.items()})
    return {key.replace(".", PARAM_SEPARATOR): dist for key, dist in found.items()}


def _setting(config: dict, name: str) -> Any:
    for part in name.split(PARAM_SEPARATOR):
        config = config[part]
    return config


class StudyRecorder(tune.Callback):
    """Records each trial of a run without Optuna's searcher (a grid, a random search)."""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.metric, self.mode, self.epochs = config.metric, config.mode, config.trial.epochs
        self.distributions = searched_distributions(config)
        self.run_dir = run_dir

    def setup(self, **info) -> None:
        # Here, not in __init__: Tune pickles its callbacks with the run, and a study's
        # database connection does not pickle.
        self.study = optuna.create_study(
            storage=study_storage(self.run_dir / STUDY_FILE),
            study_name=self.run_dir.name,
            direction="maximize" if self.mode == "max" else "minimize",
            load_if_exists=True,  # a resumed run goes on in the same study
        )
        self.trials: dict[str, optuna.Trial] = {}

    def _trial(self, trial) -> optuna.Trial:
        if (recorded := self.trials.get(trial.trial_id)) is None:
            params = {name: _setting(trial.config, name) for name in self.distributions}
            self.study.enqueue_trial(params, user_attrs={"tune_trial_id": trial.trial_id})
            recorded = self.trials[trial.trial_id] = self.study.ask(self.distributions)
        return recorded

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._trial(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if (value := result.get(self.metric)) is not None:
            self._trial(trial).report(value, result["training_iteration"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=True)

    def _end(self, trial, error: bool) -> None:
        recorded = self._trial(trial)
        last = trial.last_result or {}
        state = ended_state(last, trial.config.get("epochs", self.epochs), error)
        value = last.get(self.metric) if state == optuna.trial.TrialState.COMPLETE else None
        self.study.tell(recorded, value, state=state)
        del self.trials[trial.trial_id]


class RecordingOptunaSearch(OptunaSearch):
    """Tune's OptunaSearch, telling a trial a scheduler stopped as PRUNED (Tune's own tells it
    COMPLETE with its last value, level with trials that trained their whole budget), and
    going on in a new study trial where a resumed run continues one the interruption ended."""

    def __init__(self, *args, epochs: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.epochs = epochs

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and self._finished(ot_trial):
            self._ot_study.enqueue_trial(ot_trial.params, user_attrs={"resumes": ot_trial.number})
            self._ot_trials[trial_id] = self._ot_study.ask(self._space)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        # Tune hands the last epoch's result to this call alone: keep it with the others.
        step, value = result.get("training_iteration"), result.get(self.metric)
        if value is not None and step not in self._frozen(ot_trial).intermediate_values:
            ot_trial.report(value, step)
        budget = result.get("config", {}).get("epochs", self.epochs)
        if ended_state(result, budget, error) == optuna.trial.TrialState.PRUNED:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)

    def _frozen(self, ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial:
        return self._ot_study.get_trials(deepcopy=False)[ot_trial.number]

    def _finished(self, ot_trial: optuna.Trial) -> bool:
        return self._frozen(ot_trial).state.is_finished()


def close_study(run_dir: Path, interrupted: bool) -> int:
    """End every trial the run left RUNNING in its study: cut off by the time budget (PRUNED,
    its epochs so far kept) or interrupted (FAIL; a resume continues it). Returns how many."""
    if not (run_dir / STUDY_FILE).exists():
        return 0
    study = optuna.load_study(study_name=run_dir.name, storage=study_url(run_dir))
    left = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    state = optuna.trial.TrialState.FAIL if interrupted else optuna.trial.TrialState.PRUNED
    for trial in left:
        study.tell(trial.number, state=state)
    return len(left)
