"""Where a run's time goes: the driver's phases and each trial's start-up."""

from types import SimpleNamespace

import pytest

from tuning.run import timing
from tuning.run.timing import Phases, TrainingSpans, covered_s


def test_phases_add_up_repeats_and_keep_the_time_of_a_failed_phase(monkeypatch):
    clock = iter([0.0, 1.5, 10.0, 10.25, 20.0, 22.0])
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    phases = Phases()
    with phases.timed("ray_start"):
        pass
    with phases.timed("ray_start"):
        pass
    with pytest.raises(RuntimeError), phases.timed("trials"):
        raise RuntimeError("a trial failed")
    assert phases == {"ray_start": 1.75, "trials": 2.0}
    assert phases.line() == "ray start 1.8 s, trials 2.0 s"


def test_a_trials_span_runs_from_its_first_epochs_start_to_its_last_result(monkeypatch):
    clock = iter([0.0, 100.0, 112.0, 130.0, 135.0])  # built at 0, the fit begins at 100
    monkeypatch.setattr(timing.time, "monotonic", lambda: next(clock))
    spans = TrainingSpans()
    spans.setup()
    first, second = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    spans.on_trial_result(0, [], first, {"time_this_iter_s": 2.5})  # at 112
    spans.on_trial_result(0, [], second, {"time_this_iter_s": 4.0})  # at 130
    spans.on_trial_result(0, [], first, {"time_this_iter_s": 2.5})  # at 135
    assert spans.spans == {"a": [9.5, 35.0], "b": [26.0, 30.0]}


@pytest.mark.parametrize(
    "spans, covered",
    [
        ([], 0.0),
        ([[0, 10], [5, 12]], 12.0),  # overlapping: counted once
        ([[20, 30], [0, 10]], 20.0),  # a gap between them is not covered
        ([[0, 30], [5, 10]], 30.0),  # one inside another
    ],
)
def test_covered_time_counts_overlapping_spans_once(spans, covered):
    assert covered_s(spans) == covered
