"""Training-time augmentation on whole batches, on the batch's device, from a seeded generator.

No per-sample Python: every random choice is one tensor draw for the batch, and a crop with a
flip is two gathers of the uint8 batch (4× less memory traffic than on floats). Evaluation never
augments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainable.settings import Augment

CROP_PADDING = 4  # pixels each side, as the fast CIFAR-10 trainers use


def _draw(n: int, high: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`n` integers in [0, high) on `like`'s device."""
    return torch.randint(high, (n,), generator=generator, device=like.device)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Indices outside [0, size) mirrored back in, as reflect padding would (edge not repeated)."""
    index = index.abs()
    # The clamp only matters for images no larger than the padding, where one mirror is short.
    return torch.where(index >= size, 2 * (size - 1) - index, index).clamp(0, size - 1)


def crop_flip(
    images: torch.Tensor, kind: Augment, generator: torch.Generator, padding: int = CROP_PADDING
) -> torch.Tensor:
    """`images` (N, C, H, W, any dtype) flipped and/or shifted as `kind` says.

    flip: each image mirrored left-right with probability 1/2. crop_flip: also shifted by up
    to `padding` pixels each way, the borders reflected: a random crop of the padded image.
    """
    if kind == "none":
        return images
    n, channels, height, width = images.shape
    rows = torch.arange(height, device=images.device).expand(n, height)
    cols = torch.arange(width, device=images.device).expand(n, width)
    flip = _draw(n, 2, images, generator).bool()
    if kind == "crop_flip":
        rows = _reflect(
            rows + (_draw(n, 2 * padding + 1, images, generator) - padding)[:, None], height
        )
        cols = _reflect(
            cols + (_draw(n, 2 * padding + 1, images, generator) - padding)[:, None], width
        )
        rows = rows.reshape(n, 1, height, 1).expand(n, channels, height, width)
        images = images.gather(2, rows)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip is reversed column order
    return images.gather(3, cols.reshape(n, 1, 1, width).expand(n, channels, height, width))


def translate(images: torch.Tensor, down: int, right: int) -> torch.Tensor:
    """`images` (N, C, H, W, any dtype) moved `down` and `right` pixels (negative: up, left),
    the uncovered border reflected in, as a crop of the reflect-padded image gives."""
    _, _, height, width = images.shape
    rows = _reflect(torch.arange(height, device=images.device) - down, height)
    cols = _reflect(torch.arange(width, device=images.device) - right, width)
    return images.index_select(2, rows).index_select(3, cols)


@dataclass(frozen=True)
class Mix:
    """How a training batch was blended: each image keeps a share `weight` of its own label,
    and takes 1 - `weight` of its partner's, `partner` (the partner images' labels)."""

    partner: torch.Tensor
    weight: float


def mix(
    images: torch.Tensor,
    labels: torch.Tensor,
    mixup: float,
    cutmix: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, Mix | None]:
    """`images` (float, N×C×H×W) blended in place with a shuffled copy of the batch, by MixUp
    (α = `mixup`) or CutMix (α = `cutmix`), one at random where both are on; no Mix where both
    are 0. One λ ~ Beta(α, α) and one CutMix box for the batch, as timm's batch mode draws them.

    The partners' order comes from `generator` on the batch's device; λ, the choice and the box
    are host numbers from torch's CPU stream, which a trial's checkpoint saves.
    """
    if not (mixup or cutmix):
        return images, None
    use_cutmix = cutmix > 0 and (mixup == 0 or torch.rand(()).item() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    weight = torch.distributions.Beta(alpha, alpha).sample().item()
    order = torch.randperm(len(labels), generator=generator, device=images.device)
    partners = images.index_select(0, order)
    if use_cutmix:
        # A box of area about (1 - λ)·H·W, placed wholly inside the image; λ is then the share
        # of the image's own pixels exactly.
        _, _, height, width = images.shape
        side = math.sqrt(1 - weight)
        box_h, box_w = round(height * side), round(width * side)
        top = int(torch.randint(height - box_h + 1, ()).item())
        left = int(torch.randint(width - box_w + 1, ()).item())
        box = (slice(None), slice(None), slice(top, top + box_h), slice(left, left + box_w))
        images[box] = partners[box]
        weight = 1 - box_h * box_w / (height * width)
    else:
        images.lerp_(partners, 1 - weight)
    return images, Mix(labels.index_select(0, order), weight)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A `size`×`size` square of each image set to 0 (the channel mean, once normalised).

    The square's centre is anywhere in the image, so near an edge it is partly outside, as in
    DeVries & Taylor's cutout.
    """
    n, _, height, width = images.shape
    top = _draw(n, height, images, generator) - size // 2
    left = _draw(n, width, images, generator) - size // 2
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width, device=images.device)
    in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)
    in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return images * keep.unsqueeze(1).to(images.dtype)
