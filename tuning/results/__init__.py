"""Results: how a trial ended (`outcome`), the run folder's tables (`tables`), Tune's logs read
back into them (`tune_logs`, the one module here that reads Ray's objects), statistics and
compared groups (`stats`, `groups`), the console's summaries (`summary`) and `report.md`
(`report`).

Imports `tuning.config` only (see `tuning/__init__.py`)."""
