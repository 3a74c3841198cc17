"""The airbench family's tricks, each pinned to what it is for."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import continued_epoch
from trainable.airbench import SHIFT_GAIN, IdentityConv, ShiftNorm, Whitening, airbench
from trainable.data import DataConfig, load_dataset
from trainable.loop import Training
from trainable.settings import TrialConfig


def test_whitening_makes_the_patches_of_its_data_uncorrelated_with_unit_variance():
    torch.manual_seed(0)
    # Pixels strongly correlated, as neighbouring ones are: a brightness per image and
    # channel, and a shared one across the channels, over white noise.
    images = torch.randn(400, 3, 16, 16) + 3 * torch.randn(400, 3, 1, 1) + torch.randn(400, 1, 1, 1)
    layer = Whitening(3)
    assert layer.out_channels == 24 and not layer.weight.requires_grad
    layer.fit_to_data(images)
    with torch.no_grad():
        out = F.conv2d(images, layer.weight)  # no bias: the projection alone
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = half.T @ half / len(half)
    assert torch.allclose(covariance, torch.eye(12), atol=0.02)
    assert torch.equal(out[:, 12:], -out[:, :12])  # each filter and its negative


def test_identity_conv_starts_by_passing_its_input():
    conv = IdentityConv(4, 6)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        out = conv(x)
    assert torch.allclose(out[:, :4], x)
    assert not torch.allclose(out[:, 4:], torch.zeros_like(out[:, 4:]))  # the rest: random


def test_shift_norm_has_no_scale_and_its_shift_learns_gain_squared_as_fast():
    norm = ShiftNorm(3)
    assert [name for name, _ in norm.named_parameters()] == ["shift"]
    x = torch.randn(8, 3, 4, 4)
    target = torch.randn(8, 3, 4, 4)
    # The same step on a plain batch-norm's bias, for comparison.
    plain = torch.nn.BatchNorm2d(3, affine=True)
    plain.weight.requires_grad_(False)
    for layer in (norm, plain):
        F.mse_loss(layer(x), target).backward()
    lr = 0.1
    effective_before = norm.shift.detach() * SHIFT_GAIN
    with torch.no_grad():
        norm.shift -= lr * norm.shift.grad
    moved = norm.shift.detach() * SHIFT_GAIN - effective_before
    assert torch.allclose(moved, -lr * SHIFT_GAIN**2 * plain.bias.grad, atol=1e-6)
    norm.eval()  # running statistics moved 0.4 of the way to the batch's
    assert torch.allclose(norm.running_mean, 0.4 * x.mean((0, 2, 3)), atol=1e-6)


def test_airbench_maps_images_to_logits_and_its_width_scales_the_groups():
    model = airbench((3, 32, 32), 10, width=8)
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    out.square().sum().backward()
    frozen = {name for name, p in model.named_parameters() if p.grad is None}
    assert frozen == {"0.weight"}  # only the whitening filters are fixed
    convs = [m.out_channels for m in model.modules() if isinstance(m, IdentityConv)]
    assert convs == [8, 8, 16, 16, 32, 32]


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(source="synthetic", val_size=200, train_subset=600))


def test_training_fits_the_whitening_to_the_data_and_restores_exactly(data):
    trial = TrialConfig(
        model="airbench", width=4, optimizer="sgd", momentum=0.85, lr=0.05, batch_size=100,
        epochs=3, augment="crop_flip", crop_padding=2, label_smoothing=0.2,
    )  # fmt: skip
    first = Training(trial, data, torch.device("cpu"))
    assert first.optimizer.param_groups[0]["momentum"] == 0.85
    whitening = first.model[0]
    fresh = Whitening(3)
    fresh.fit_to_data(first.data.normalise(first.data.train[0][:5000]))
    assert torch.equal(whitening.weight, fresh.weight)
    first.train_epoch()
    expected, got = continued_epoch(first, data)
    assert got["train_loss"] == expected["train_loss"]


def test_the_whitening_bias_trains_its_first_epochs_only(data):
    trial = TrialConfig(
        model="airbench", width=4, optimizer="sgd", momentum=0.85, lr=0.05, batch_size=100,
        epochs=4, whitening_bias_epochs=2,
    )  # fmt: skip
    training = Training(trial, data, torch.device("cpu"))
    biases = [training.model[0].bias.detach().clone()]
    for _ in range(trial.epochs):
        training.train_epoch()
        biases.append(training.model[0].bias.detach().clone())
    moved = [not torch.equal(a, b) for a, b in zip(biases, biases[1:], strict=False)]
    assert moved == [True, True, False, False]
