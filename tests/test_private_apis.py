"""Pins for the private APIs the code keeps (docs/dependencies.md): each fails when the API
it relies on stops doing what the code needs."""

from pathlib import Path

from ray import tune

from tuning.run.tuner import restore_tuner


class Started(tune.Callback):
    def __init__(self) -> None:
        self.trials: list[str] = []

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.trials.append(trial.trial_id)


def test_a_restored_tuner_takes_this_sessions_callbacks(ray_session, tmp_path):
    # Tuner.restore brings back the first session's pickled callbacks and takes no others:
    # restore_tuner gives this session's through the private `_local_tuner`.
    ready = tmp_path / "ready"

    def fails_until_ready(config):
        if not Path(config["ready"]).exists():
            raise RuntimeError("not yet")
        tune.report({"epoch": 1, "val_acc": 0.5})

    first = tune.Tuner(
        fails_until_ready,
        param_space={"ready": str(ready)},
        run_config=tune.RunConfig(
            name="t", storage_path=str(tmp_path), callbacks=[Started()], verbose=0
        ),
    ).fit()
    assert first.num_errors == 1
    ready.touch()
    mine = Started()
    results = restore_tuner(str(tmp_path / "t"), fails_until_ready, [mine]).fit()
    assert results.num_errors == 0  # the errored trial ran again, in this session
    assert mine.trials == [results[0].metrics["trial_id"]]
