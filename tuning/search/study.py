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
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import optuna
from ray import tune

from tuning.config import ExperimentConfig
from tuning.config.keys import (
    EPOCH,
    PARAM_SEPARATOR,
    TRAINING_ITERATION,
    TUNE_TRIAL_MARK,
    get_dotted,
)
from tuning.config.logs import quieter
from tuning.config.space import optuna_space
from tuning.results.outcome import epoch_budget, trial_outcome

STUDY_FILE = "study.db"


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

    def __reduce__(self) -> tuple:
        return (_reopen_storage, ())


def _reopen_storage() -> RunStudyStorage:
    """The storage of the run being resumed (`study_file`), through Optuna's constructor."""
    path = _STUDY_FILE.get()
    if path is None:
        raise RuntimeError("a run's study storage was unpickled outside study_file()")
    return RunStudyStorage(f"sqlite:///{path}")


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


def open_study(
    run_dir: Path, *, metric: str, mode: str, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    """The run's study in `run_dir/study.db`, named after the run and made if new (a warm
    start or a resume finds it), its objective named after the run's metric, so that
    optuna-dashboard's plots say `val_acc` rather than "Objective 0"."""
    with quieter("optuna"):  # no line for the study made
        study = optuna.create_study(
            storage=study_storage(run_dir / STUDY_FILE),
            study_name=run_dir.name,
            sampler=sampler,
            direction="maximize" if mode == "max" else "minimize",
            load_if_exists=True,
        )
    with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
    return study


def dashboard_command(run_dir: Path) -> str:
    return f"optuna-dashboard {study_url(run_dir)}"


class StudyRecorder(tune.Callback):
    """Records each trial of a run without Optuna's searcher (a grid, a random search)."""

    def __init__(self, config: ExperimentConfig, run_dir: Path) -> None:
        self.metric, self.mode, self.epochs = config.metric, config.mode, config.trial.epochs
        self.distributions = optuna_space(config)
        self.run_dir = run_dir

    def setup(self, **info) -> None:
        # Here, not in __init__: Tune pickles its callbacks with the run, and a study's
        # database connection does not pickle.
        self.study = open_study(self.run_dir, metric=self.metric, mode=self.mode)
        self.trials: dict[str, optuna.Trial] = {}

    def _trial(self, trial) -> optuna.Trial:
        if (recorded := self.trials.get(trial.trial_id)) is None:
            params = {
                name: get_dotted(trial.config, name, sep=PARAM_SEPARATOR)
                for name in self.distributions
            }
            self.study.enqueue_trial(params, user_attrs={TUNE_TRIAL_MARK: trial.trial_id})
            recorded = self.trials[trial.trial_id] = self.study.ask(self.distributions)
        return recorded

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._trial(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if (value := result.get(self.metric)) is not None:
            self._trial(trial).report(value, result[TRAINING_ITERATION])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, error=True)

    def _end(self, trial, error: bool) -> None:
        recorded = self._trial(trial)
        last = trial.last_result or {}
        outcome = trial_outcome(
            error=error,
            diverged=bool(last.get("diverged")),
            epochs=last.get(EPOCH, 0),
            budget=epoch_budget(trial.config, self.epochs),
        )
        state = optuna.trial.TrialState[outcome.study_state]
        value = last.get(self.metric) if state == optuna.trial.TrialState.COMPLETE else None
        self.study.tell(recorded, value, state=state)
        del self.trials[trial.trial_id]


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
