"""The MLP's hand-written training step against autograd, and its input-major layers against
nn.Linear."""

import contextlib
import copy
import io
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import trainable.mlp
from tests.conftest import REPO
from trainable.augment import Mix
from trainable.data import DataConfig, load_dataset
from trainable.families import build_model
from trainable.loop import Training, make_optimizer
from trainable.mlp import InputMajorLinear
from trainable.mlp_step import MLPStep
from trainable.settings import TrialConfig
from trainable.steps import AutogradStep

sys.path.insert(0, str(REPO / "benchmarks"))
from hardware import mlp_training_flops  # noqa: E402


def _mlp(depth=1, dropout=0.0, hidden=32, shape=(3, 8, 8)) -> nn.Sequential:
    return build_model(TrialConfig(hidden=hidden, depth=depth, dropout=dropout), shape, 10)


@pytest.mark.parametrize(
    "depth, dropout, smoothing", [(1, 0.0, 0.0), (2, 0.0, 0.1), (3, 0.3, 0.0), (2, 0.5, 0.2)]
)
def test_gradients_loss_and_logits_are_autograds(depth, dropout, smoothing):
    torch.manual_seed(0)
    ours = _mlp(depth, dropout)
    reference = copy.deepcopy(ours)
    images, labels = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))

    torch.manual_seed(1)  # dropout must draw the same masks in both
    loss, logits = MLPStep(ours, None, smoothing).backward(images, labels)
    torch.manual_seed(1)
    expected_logits = reference(images)
    expected = nn.functional.cross_entropy(expected_logits, labels, label_smoothing=smoothing)
    expected.backward()

    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    torch.testing.assert_close(loss, expected)
    for (name, got), want in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, msg=name)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_mixed_batchs_gradients_are_autograds_and_the_autograd_steps(smoothing):
    torch.manual_seed(0)
    ours = _mlp(depth=2)
    reference = copy.deepcopy(ours)
    images, labels = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    how = Mix(partner=labels.roll(1), weight=0.3)

    loss, _ = MLPStep(ours, None, smoothing).backward(images, labels, how)
    logits = reference(images)
    expected = 0.3 * nn.functional.cross_entropy(
        logits, labels, label_smoothing=smoothing
    ) + 0.7 * nn.functional.cross_entropy(logits, how.partner, label_smoothing=smoothing)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for (name, got), want in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad, msg=name)
    autograd_loss, _ = AutogradStep(
        copy.deepcopy(reference), torch.optim.SGD(reference.parameters()), smoothing,
        contextlib.nullcontext,
    )(images, labels, how)  # fmt: skip
    torch.testing.assert_close(autograd_loss, expected)


def test_the_step_runs_the_floors_flops_and_no_more():
    model = _mlp(hidden=128, shape=(3, 32, 32))
    images, labels = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    with FlopCounterMode(display=False) as counter:
        MLPStep(model, None, 0.0).backward(images, labels)
    assert counter.get_total_flops() == 64 * mlp_training_flops(3072, 128, 10)


def test_the_loop_takes_the_hand_written_step_for_the_mlp_only():
    data = load_dataset(DataConfig(source="synthetic", val_size=100, train_subset=200))
    cpu = torch.device("cpu")
    mlp = Training(TrialConfig(hidden=16, depth=2, dropout=0.2), data, cpu)
    cnn = Training(TrialConfig(model="cnn", width=4), data, cpu)
    assert isinstance(mlp.step, MLPStep) and isinstance(cnn.step, AutogradStep)
    before = mlp.model[1].weight.clone()
    assert mlp.train_epoch()["train_loss"] > 0
    assert not torch.equal(mlp.model[1].weight, before)  # the optimiser stepped


def _with_layer(model: nn.Sequential, index: int, layer: nn.Module) -> nn.Sequential:
    layers = list(model)
    return nn.Sequential(*layers[:index], layer, *layers[index:])


class WiderLinear(InputMajorLinear):
    """A subclass the step cannot know: it may compute something else."""


@pytest.mark.parametrize(
    "changed",
    [
        lambda m: _with_layer(m, 3, nn.GELU()),  # after the hidden ReLU
        lambda m: _with_layer(m, 2, nn.LayerNorm(32)),  # between the linear and its ReLU
        lambda m: nn.Sequential(*m[:2], nn.GELU(), *m[3:]),  # GELU instead of ReLU
        lambda m: nn.Sequential(m[0], WiderLinear(192, 32), *m[2:]),
        lambda m: nn.Sequential(nn.Flatten(), nn.Linear(192, 32), *m[2:]),
        lambda m: nn.Sequential(*m[:3], nn.Dropout(0.2), *m[3:6], *m[7:]),  # dropout once of two
        lambda m: nn.Sequential(*m, nn.Tanh()),
    ],
)
def test_the_step_refuses_any_network_but_the_one_it_computes(changed):
    assert MLPStep.fits(_mlp(depth=2, dropout=0.3))
    assert MLPStep.fits(_mlp(depth=1))
    assert not MLPStep.fits(changed(_mlp(depth=2)))


def test_an_mlp_with_a_layer_the_step_does_not_know_trains_through_autograd(monkeypatch):
    original = trainable.mlp.mlp
    # The wrapper names input_shape: a builder that does not is built without it.
    monkeypatch.setattr(
        trainable.mlp,
        "mlp",
        lambda input_shape, **kwargs: _with_layer(original(input_shape, **kwargs), 3, nn.GELU()),
    )
    data = load_dataset(DataConfig(source="synthetic", val_size=100, train_subset=200))
    training = Training(TrialConfig(hidden=16), data, torch.device("cpu"))
    assert [type(m) for m in training.model][2:4] == [nn.ReLU, nn.GELU]
    assert isinstance(training.step, AutogradStep)

    reference = copy.deepcopy(training.model)
    optimizer = make_optimizer(TrialConfig(), reference.parameters())
    images, labels = training.data.training_batch(torch.arange(64))
    loss, _ = training.step(images, labels)
    expected = nn.functional.cross_entropy(reference(images), labels)
    expected.backward()
    optimizer.step()
    assert loss.item() == expected.item()
    for got, want in zip(training.model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(got, want)
    # The hand-written step would have trained another network: it skips the GELU.
    skipping = copy.deepcopy(reference)
    wrong, _ = MLPStep(skipping, make_optimizer(TrialConfig(), skipping.parameters()), 0.0)(
        images, labels
    )
    assert wrong.item() != pytest.approx(expected.item(), rel=1e-3)


def test_input_major_layers_keep_nn_linears_initialisation_and_state_dict():
    torch.manual_seed(0)
    ours = _mlp(hidden=128, shape=(3, 32, 32))
    torch.manual_seed(0)
    original = nn.Sequential(nn.Flatten(), nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))
    for mine, theirs in zip(ours.state_dict().items(), original.state_dict().items(), strict=True):
        assert mine[0] == theirs[0]
        assert torch.equal(mine[1], theirs[1]), mine[0]
    images = torch.randn(8, 3, 32, 32)
    torch.testing.assert_close(ours(images), original(images))

    # Saved and loaded both ways, as checkpoints and exported models are.
    saved = io.BytesIO()
    torch.save(ours.state_dict(), saved)
    saved.seek(0)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))
    plain.load_state_dict(torch.load(saved, weights_only=True))
    torch.testing.assert_close(plain(images), ours(images))
    fresh = _mlp(hidden=128, shape=(3, 32, 32))
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh(images), ours(images))
    assert fresh[1].weight_t.is_contiguous()


def test_the_weight_view_writes_through():
    layer = InputMajorLinear(6, 4)
    with torch.no_grad():
        layer.weight[2, 5] = 7.0
    assert layer.weight.shape == (4, 6) and layer.weight_t[5, 2] == 7.0


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_the_update_is_the_optimisers_step_exactly(optimizer):
    config = TrialConfig(optimizer=optimizer, lr=0.01, weight_decay=0.1)
    torch.manual_seed(0)
    ours = _mlp(depth=2)
    reference = copy.deepcopy(ours)
    step = MLPStep(ours, make_optimizer(config, ours.parameters()), 0.0)
    expected = make_optimizer(config, reference.parameters())
    # Adam and AdamW update without `optimizer.step()`, which imports torch._dynamo.
    stepped = []
    step.optimizer.step = lambda: stepped.append(type(step.optimizer).step(step.optimizer))
    for round in range(2):
        for _ in range(3):
            grads = [torch.randn_like(p) for p in ours.parameters()]
            for param, twin, grad in zip(
                ours.parameters(), reference.parameters(), grads, strict=True
            ):
                param.grad.copy_(grad)
                twin.grad = grad.clone()
            step.update()
            expected.step()
        for param, twin in zip(ours.parameters(), reference.parameters(), strict=True):
            assert torch.equal(param, twin)
        if round == 0:  # a loaded checkpoint brings new state tensors: updates must use them
            saved = io.BytesIO()
            torch.save(step.optimizer.state_dict(), saved)
            saved.seek(0)
            step.optimizer.load_state_dict(torch.load(saved, weights_only=True))
    for state, twin in zip(step.optimizer.state.values(), expected.state.values(), strict=True):
        assert state.keys() == twin.keys()
        for key in state:
            assert torch.equal(state[key], twin[key]), key
            assert (state[key].dtype, state[key].device) == (twin[key].dtype, twin[key].device)
    assert bool(stepped) == (optimizer == "sgd")
