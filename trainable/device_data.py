"""A trial's data on its device: uint8 splits moved once, batches normalised and augmented there."""

from __future__ import annotations

import math
import warnings

import torch

from trainable.augment import Mix, crop_flip, cutout, mix
from trainable.data import DataBundle
from trainable.settings import TrialConfig


def as_tensor(array, device: torch.device) -> torch.Tensor:
    """A tensor over `array`; zero-copy on the CPU even when the array is a read-only view."""
    with warnings.catch_warnings():
        # Object-store arrays are read-only; we never write to them, so the warning is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


class DeviceData:
    """The train, val and test splits as uint8 tensors on `device`, and the trial's way of
    turning their images into a network's float input."""

    def __init__(
        self, data: DataBundle, device: torch.device, trial: TrialConfig, channels_last: bool
    ) -> None:
        self.device = device
        self.augment, self.cutout = trial.augment, trial.cutout
        self.crop_padding = trial.crop_padding
        self.mixup, self.cutmix = trial.mixup, trial.cutmix
        self.channels_last = channels_last
        self.train = (as_tensor(data.train_x, device), as_tensor(data.train_y, device))
        self.val = (as_tensor(data.val_x, device), as_tensor(data.val_y, device))
        self.test = (as_tensor(data.test_x, device), as_tensor(data.test_y, device))
        if trial.normalize == "channel":
            mean, std = torch.from_numpy(data.mean), torch.from_numpy(data.std)
        else:  # "none": scale to [0, 1] only, as the original experiment did
            mean, std = torch.zeros(len(data.mean)), torch.ones(len(data.std))
        # x_norm = (x / 255 - mean) / std = x * scale + shift, one fused op per batch, on
        # flattened images: broadcasting along the last axis only is much faster on a CPU than
        # per-channel (1, C, 1, 1) broadcasting.
        pixels = data.image_shape[1] * data.image_shape[2]
        self.scale = (1 / (255 * std)).repeat_interleave(pixels).view(1, -1).to(device)
        self.shift = (-mean / std).repeat_interleave(pixels).view(1, -1).to(device)
        self.batch_buffers: dict[tuple[int, int], torch.Tensor] = {}  # see `batch_buffer`
        # Augmentation draws on the data's device, from a stream of its own (checkpointed).
        self.augment_rng = torch.Generator(device=device).manual_seed(trial.seed)

    def normalise(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Float images, normalised, from uint8 ones; written into `out` (float, the batch's
        flattened shape) where given."""
        flat = images.flatten(1)
        if out is None:  # uint8 in, float out of the one op
            x = torch.addcmul(self.shift, flat, self.scale)
        else:
            # Convert into `out`, then scale in place: faster than the one mixed-dtype op,
            # which makes a float copy of its own first.
            x = torch.addcmul(self.shift, out.copy_(flat), self.scale, out=out)
        x = x.view(images.shape)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def batch_buffer(self, images: torch.Tensor) -> torch.Tensor:
        """The float buffer training batches of this shape are normalised into, made once.

        A fresh 768 KiB tensor each step (batch 64) is a measurable share of the MLP's epoch.
        Each step is done with its batch before the next overwrites it."""
        shape = images.shape[0], math.prod(images.shape[1:])
        if (buffer := self.batch_buffers.get(shape)) is None:
            buffer = self.batch_buffers[shape] = torch.empty(shape, device=self.device)
        return buffer

    def training_images(self, batch: torch.Tensor) -> torch.Tensor:
        """The training images at the indices `batch`, normalised and augmented as configured."""
        # Crops and flips on uint8, before normalising; cutout after, so its 0 is the mean.
        # index_select, not images[batch]: a tenth of the time for the same rows.
        x = self.train[0].index_select(0, batch)
        x = crop_flip(x, self.augment, self.augment_rng, self.crop_padding)
        x = self.normalise(x, out=self.batch_buffer(x))
        if self.cutout:
            x = cutout(x, self.cutout, self.augment_rng)
        return x

    def mixed(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, Mix | None]:
        """`training_images`' batch blended by the trial's MixUp or CutMix (None: neither)."""
        return mix(images, labels, self.mixup, self.cutmix, self.augment_rng)

    def training_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (as `training_images` makes them) and labels at the indices `batch`."""
        return self.training_images(batch), self.train[1].index_select(0, batch)
