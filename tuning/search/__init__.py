"""Search: the config's search and scheduler sections as Tune's searcher and scheduler
(`plan`), Optuna's sampler as a Tune searcher (`searcher`), every run's study in `study.db`
(`study`), and earlier runs' trials as a warm start (`warm_start`).

Imports `tuning.config` and `tuning.results`; never `tuning.run` (see `tuning/__init__.py`)."""
