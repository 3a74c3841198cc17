"""Learning-rate schedules: warm-up to the configured peak, the configured end."""

import pytest

from trainable.schedules import lr_at, warmup_for
from trainable.settings import TrialConfig


def settings(**fields) -> TrialConfig:
    return TrialConfig(lr=0.2, epochs=10, **fields)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_warmup_rises_linearly_to_the_peak(schedule):
    config = settings(schedule=schedule, warmup=2.0)
    assert lr_at(config, 0) == 0
    assert lr_at(config, 1) == pytest.approx(0.1)
    assert lr_at(config, 2) == pytest.approx(0.2)  # the peak, at the end of the warm-up
    assert max(lr_at(config, step / 100) for step in range(1001)) == pytest.approx(0.2)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("warmup", [0.0, 1.5])
def test_decaying_schedules_end_at_zero(schedule, warmup):
    config = settings(schedule=schedule, warmup=warmup)
    last_batch = 10 - 1 / 176  # progress at the last of 176 batches per epoch
    assert lr_at(config, last_batch) < 0.002
    assert lr_at(config, 10) == pytest.approx(0, abs=1e-12)
    lrs = [lr_at(config, warmup + step / 10) for step in range(int((10 - warmup) * 10) + 1)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))  # never rises after warm-up


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_warmup_starts_at_lr_start_and_the_decay_ends_at_lr_end(schedule):
    # airbench's triangle: from 0.2 of the peak up, down to 0.07 of it
    config = settings(schedule=schedule, warmup=2.0, lr_start=0.2, lr_end=0.07)
    assert lr_at(config, 0) == pytest.approx(0.04)
    assert lr_at(config, 1) == pytest.approx(0.12)
    assert lr_at(config, 2) == pytest.approx(0.2)
    assert lr_at(config, 6) == pytest.approx(0.2 * (0.07 + 0.93 * 0.5))  # halfway down, either
    assert lr_at(config, 10) == lr_at(config, 12) == pytest.approx(0.014)
    lrs = [lr_at(config, step / 10) for step in range(101)]
    assert min(lrs) == pytest.approx(0.014)


def test_shapes_differ_between_cosine_and_onecycle():
    cosine = lr_at(settings(schedule="cosine"), 2.5)
    onecycle = lr_at(settings(schedule="onecycle"), 2.5)
    assert onecycle == pytest.approx(0.15)  # linear: a quarter of the way down
    assert cosine == pytest.approx(0.2 * 0.5 * (1 + 0.7071067811865476))


def test_constant_without_warmup_is_the_old_behaviour():
    config = settings(schedule="constant")
    assert {lr_at(config, p) for p in (0, 3.3, 9.99)} == {0.2}


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        settings(schedule="step")


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
@pytest.mark.parametrize("ends", [{}, {"lr_start": 0.2, "lr_end": 0.07}])
def test_a_shorter_budget_with_its_warmup_scaled_is_the_same_schedule_compressed(schedule, ends):
    full = settings(schedule=schedule, warmup=3.0, **ends)  # 10 epochs
    short = TrialConfig(lr=0.2, epochs=4, schedule=schedule, warmup=warmup_for(10, 3.0, 4), **ends)
    for step in range(41):
        progress = step / 10  # of the short run's 4 epochs
        assert lr_at(short, progress) == pytest.approx(lr_at(full, progress * 10 / 4))
    assert lr_at(short, 1.2) == pytest.approx(0.2)  # the peak at 30% of either run
