"""airbench's lookahead: the pull toward the slow copy, its end, and its checkpoint."""

import pytest
import torch
from torch import nn

from tests.conftest import continued_epoch
from trainable.checkpoint import restore_training, training_state
from trainable.data import DataConfig, load_dataset
from trainable.lookahead import SLOW_SHARE, Lookahead
from trainable.loop import Training
from trainable.settings import TrialConfig


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))


def _shift(model, by):
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(by)


def test_a_pull_early_in_the_run_keeps_the_model_and_a_late_one_averages():
    model = _model()
    lookahead = Lookahead(model)
    _shift(model, 1.0)
    lookahead.pull(0.0)  # no weight on the slow copy yet: it catches up with the model
    caught_up = {k: v.clone() for k, v in model.state_dict().items()}
    _shift(model, 1.0)
    lookahead.pull(1.0)  # the last step: the slow copy weighs SLOW_SHARE
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():  # weights and running statistics alike
            expected = caught_up[name] + (1 - SLOW_SHARE)
            torch.testing.assert_close(tensor, expected)
        else:  # the batch count is not averaged
            assert torch.equal(tensor, caught_up[name])


def test_at_the_end_the_model_is_the_slow_copy():
    model = _model()
    lookahead = Lookahead(model)
    before = model[0].weight.detach().clone()
    _shift(model, 1.0)
    lookahead.finish()
    assert torch.equal(model[0].weight, before)


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(source="synthetic", val_size=200, train_subset=600))


CONFIG = TrialConfig(
    model="airbench", width=4, optimizer="sgd", momentum=0.85, lr=0.05, batch_size=50,
    epochs=3, schedule="onecycle", warmup=0.5, lookahead=True,
)  # fmt: skip


def _float_state(model):
    """The model's weights and running statistics, in the slow copy's order."""
    return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]


# The MLP trains through its hand-written step (trainable/mlp_step.py), not autograd.
@pytest.mark.parametrize(
    "changes", [{}, {"model": "mlp", "hidden": 16, "optimizer": "adam", "lr": 1e-3}]
)
def test_a_trial_with_lookahead_ends_on_its_slow_copy_and_differs_from_one_without(data, changes):
    cpu = torch.device("cpu")
    config = CONFIG.model_copy(update=changes)
    training = Training(config, data, cpu)
    plain = Training(config.model_copy(update={"lookahead": False}), data, cpu)
    slow_before = [t.clone() for t in training.lookahead.slow]
    for _ in range(config.epochs):
        training.train_epoch(), plain.train_epoch()
    slow = training.lookahead.slow
    assert not all(torch.equal(a, b) for a, b in zip(slow_before, slow, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(_float_state(training.model), slow, strict=True))
    assert training.evaluate("val") != plain.evaluate("val")


def test_a_restored_trial_with_lookahead_continues_exactly(data):
    first = Training(CONFIG, data, torch.device("cpu"))
    first.train_epoch()
    expected, got = continued_epoch(first, data)
    assert got["train_loss"] == expected["train_loss"]


def test_a_checkpoint_saved_without_lookahead_starts_the_slow_copy_from_its_weights(data):
    # PBT may restore a trial that had lookahead off into one that has it on.
    plain = Training(CONFIG.model_copy(update={"lookahead": False}), data, torch.device("cpu"))
    plain.train_epoch()
    restored = Training(CONFIG, data, torch.device("cpu"))
    restore_training(restored, training_state(plain))
    weights = _float_state(plain.model)
    assert all(torch.equal(a, b) for a, b in zip(weights, restored.lookahead.slow, strict=True))
