"""The Optuna study's storage, saved relative to the run folder so that a moved run resumes.

Tune pickles the searcher, its storage included, into the run's state (`searcher-state-*.pkl`,
`tuner.pkl`). An absolute path to study.db there would make a run folder moved or copied
elsewhere resume against the old folder's study (or fail where that folder is gone).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import optuna

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
    return RunStudyStorage(f"sqlite:///{Path(path).resolve()}")
