"""The CNN family: a compact residual network after the fast CIFAR-10 trainers."""

from __future__ import annotations

from torch import nn


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3×3 conv (→ 2×2 max-pool) → batchnorm → GELU; pooling before the norm halves its cost."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.GELU()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x): the second conv of a stage learns a correction, which trains faster."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return x + self.inner(x)


def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Sequential:
    """A compact CIFAR-10 CNN after the fast trainers (airbench, Page's ResNet-9), for CPU speed.

    A 2×2 stride-2 patch stem halves the resolution before any 3×3 conv (on 2 CPU cores a
    3×3 stem at 32×32 makes an epoch 3× slower), then two stages each of conv → pool and a
    residual conv, widths 2·`width` and 4·`width`, global max-pool and a linear head.
    32×32 input: 16×16 after the stem, 8×8 and 4×4 after the stages.
    """
    w = width
    return nn.Sequential(
        nn.Conv2d(input_shape[0], w, 2, stride=2, bias=False),
        nn.BatchNorm2d(w),
        nn.GELU(),
        conv_bn(w, 2 * w, pool=True),
        Residual(conv_bn(2 * w, 2 * w)),
        conv_bn(2 * w, 4 * w, pool=True),
        Residual(conv_bn(4 * w, 4 * w)),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * w, num_classes, bias=False),
    )
