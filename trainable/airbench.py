"""The airbench family: Keller Jordan's fast CIFAR-10 network (airbench94), narrowed for CPUs.

A frozen 2×2 patch-whitening layer, three groups of conv → 2×2 max-pool → batch-norm → GELU →
conv → batch-norm → GELU, a max-pool to one pixel and a linear head whose logits are scaled by
1/9. The tricks that make it train in a few epochs live in the network, so any optimiser and
schedule of a trial can drive it:
- the whitening layer's filters are the eigenvectors of the training images' 2×2 patch
  covariance, each with its negative, scaled by the inverse square root of its eigenvalue
  (`fit_to_data`, called once on training images before the first step); only its bias trains,
  and only in the first few epochs (`start_epoch`);
- every 3×3 conv starts as the identity on its first input-many filters (an implicit residual);
- batch-norms have no trained scale, and their shift learns 64× as fast as the weights (airbench
  gives biases their own learning rate; here the shift is stored divided by 8, which is the same
  update for any optimiser that is linear in the gradient, such as SGD with momentum).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WHITENING_KERNEL = 2
WHITENING_EPS = 5e-4  # added to the eigenvalues: filters of near-empty directions stay bounded
SHIFT_GAIN = 8.0  # the batch-norm shift is SHIFT_GAIN · parameter: SHIFT_GAIN² the learning rate
LOGIT_SCALE = 1 / 9
WHITENING_BIAS_EPOCHS = 3  # airbench's; the family's setting (families.py) defaults to it too


class Whitening(nn.Conv2d):
    """2×2 conv whose filters whiten the patches of the data it is fitted to: frozen weight,
    trained bias. 2·C·k² output channels: each eigen-filter and its negative, so a GELU after it
    keeps both signs."""

    def __init__(
        self,
        channels: int,
        kernel: int = WHITENING_KERNEL,
        bias_epochs: int = WHITENING_BIAS_EPOCHS,
    ) -> None:
        super().__init__(channels, 2 * channels * kernel**2, kernel, bias=True)
        self.weight.requires_grad_(False)
        nn.init.zeros_(self.bias)
        self.bias_epochs = bias_epochs

    def start_epoch(self, epoch: int) -> None:
        """The bias trains in the first `bias_epochs` epochs (`epoch` counts from 0), then is
        frozen: a parameter without a gradient is one SGD skips."""
        self.bias.requires_grad_(epoch < self.bias_epochs)

    @torch.no_grad()
    def fit_to_data(self, images: torch.Tensor) -> None:
        """Set the filters from normalised training images (N, C, H, W)."""
        channels, kernel = self.in_channels, self.kernel_size[0]
        patches = images.float().unfold(2, kernel, 1).unfold(3, kernel, 1)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels * kernel**2)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = eigenvectors.T.reshape(-1, channels, kernel, kernel)
        filters = filters / torch.sqrt(eigenvalues + WHITENING_EPS).view(-1, 1, 1, 1)
        filters = filters.flip(0)  # the strongest directions first
        self.weight.copy_(torch.cat((filters, -filters)))


class IdentityConv(nn.Conv2d):
    """3×3 conv, no bias, its first `in_channels` filters initialised to pass their input."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(channels_in, channels_out, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight[: self.in_channels])


class ShiftNorm(nn.BatchNorm2d):
    """Batch-norm without a trained scale, its shift learning SHIFT_GAIN² as fast; running
    statistics move 0.4 of the way to each batch's, as airbench's do."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, eps=1e-12, momentum=0.4, affine=False)
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            None,
            self.shift * SHIFT_GAIN,
            self.training,  # running statistics are always kept: eval mode uses them
            self.momentum,
            self.eps,
        )


class ConvGroup(nn.Sequential):
    """conv → 2×2 max-pool → norm → GELU → conv → norm → GELU (pooling first: the norm and
    activation run on a quarter of the pixels)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__(
            IdentityConv(channels_in, channels_out),
            nn.MaxPool2d(2),
            ShiftNorm(channels_out),
            nn.GELU(),
            IdentityConv(channels_out, channels_out),
            ShiftNorm(channels_out),
            nn.GELU(),
        )


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def airbench(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 32,
    whitening_bias_epochs: int = WHITENING_BIAS_EPOCHS,
) -> nn.Sequential:
    """The network with groups `width`, 2·`width` and 4·`width` channels wide (airbench94: 64,
    256, 256), its whitening bias trained for the first `whitening_bias_epochs` epochs. 32×32
    input: 31×31 after the whitening, 15, 7 and 3 after the groups."""
    channels = input_shape[0]
    whitening = Whitening(channels, bias_epochs=whitening_bias_epochs)
    return nn.Sequential(
        whitening,
        nn.GELU(),
        ConvGroup(whitening.out_channels, width),
        ConvGroup(width, 2 * width),
        ConvGroup(2 * width, 4 * width),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * width, num_classes, bias=False),
        Scale(LOGIT_SCALE),
    )
