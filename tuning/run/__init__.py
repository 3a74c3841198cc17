"""The run: the command line (`cli`), the steps of a run (`pipeline`), its folder and lock
(`folder`), Ray and the cluster (`cluster`), where Tune keeps state (`storage`), the Tuner
(`tuner`), the finalists' re-runs (`finalists`), the console's live view (`progress`) and where
the time goes (`timing`).

May import every other room (see `tuning/__init__.py`)."""
