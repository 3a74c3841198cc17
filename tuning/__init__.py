"""Drivers: config → search space → Tuner → Parquet tables and reports, in four rooms.

    config    the experiment's schema, its files and `--set` overrides, the names and the
              search space's translation every room shares, credentials, the reference
    results   how a trial ended, the tables, Tune's logs read back, statistics, compared
              groups, the console's summaries and report.md
    search    Tune's searcher and scheduler from the config, Optuna's sampler as a Tune
              searcher, the run's study, warm starts
    run       the command line, the run's steps, its folder, Ray and the cluster, storage,
              the Tuner, the finalists, the live console, timing

Data flows one way: a room imports only the rooms listed before it (config ← results ←
search ← run), never one after it, and no two modules import each other, directly or round
a circle. `results` reads Ray's objects in `results.tune_logs` alone: the rest of it, the
report included, runs without Ray. `trainable/` imports nothing of `tuning/`. The entry
scripts (`run_grid.py`, `run_optuna.py`, `report.py`) sit above every room.
tests/test_layout.py checks all of this.
"""
