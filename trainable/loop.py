"""The epoch loop: index batches over in-memory uint8 tensors, normalised on the device."""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainable.augment import crop_flip, cutout
from trainable.data import DataBundle
from trainable.eager import skip_compiler_marks
from trainable.mlp_step import MLPStep
from trainable.models import InputMajorLinear, build_model
from trainable.schedules import lr_at

# Evaluation needs no gradients, so large batches cost fewer dispatches; 1024 keeps a trial's
# transient memory small (a 1024-image float batch is 12 MiB).
EVAL_BATCH = 1024
DIVERGENCE_CHECK = 50  # steps between looks at the running loss: a host sync each time
# Checkpoint format 2: the MLP's layers hold their weights input-major, and so do the optimiser
# moments of those weights (the model's own state dict keeps nn.Linear's shapes throughout).
CHECKPOINT_FORMAT = 2


def as_tensor(array, device: torch.device) -> torch.Tensor:
    """A tensor over `array`; zero-copy on the CPU even when the array is a read-only view."""
    with warnings.catch_warnings():
        # Object-store arrays are read-only; we never write to them, so the warning is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


def finite(losses: list[torch.Tensor]) -> bool:
    """Whether every loss in `losses` is finite (a host sync)."""
    return bool(torch.stack(losses).isfinite().all())


def make_optimizer(config: dict, params) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters; on 2 CPU cores Adam's step drops from 1.1 to 0.3 s
    # per CIFAR-10 epoch.
    skip_compiler_marks()  # nothing here compiles: keep torch._dynamo's import out (eager.py)
    name, lr, decay = config["optimizer"], config["lr"], config["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, nesterov=True, weight_decay=decay, fused=True
        )
    raise ValueError(f"unknown optimizer {name!r}")


def moments_input_major(saved: dict, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict:
    """`saved`, an optimiser state dict from a model with nn.Linear layers, with the per-weight
    state (Adam's moments, SGD's momentum) of `model`'s InputMajorLinear weights transposed to
    match them. Parameters are numbered in `optimizer`'s order, as its state dict does."""
    weights = {id(m.weight_t) for m in model.modules() if isinstance(m, InputMajorLinear)}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    transposed = {index for index, param in enumerate(params) if id(param) in weights}
    state = {
        index: {
            key: value.t().contiguous()
            if index in transposed and torch.is_tensor(value) and value.dim() == 2
            else value
            for key, value in entry.items()
        }
        for index, entry in saved["state"].items()
    }
    return {**saved, "state": state}


@dataclass(frozen=True)
class FastPaths:
    """Memory layout and precision for a model on a device."""

    channels_last: bool
    autocast: torch.dtype | None  # None: full float32


def fast_paths(device_type: str, model: str) -> FastPaths:
    """What speeds up `model` on `device_type` without costing accuracy.

    Convolutions only: channels-last lets cuDNN and oneDNN pick their fastest kernels (on
    2 CPU cores the CNN's training step is 1.2× faster); bf16 autocast only on CUDA, where
    tensor cores run it, while a CPU without bf16 units would emulate it slowly. The MLP is a
    few matrix products: neither helps it, and its results stay bit-identical.
    """
    if model != "cnn":
        return FastPaths(channels_last=False, autocast=None)
    return FastPaths(channels_last=True, autocast=torch.bfloat16 if device_type == "cuda" else None)


class Training:
    """One trial's model, optimiser, data on its device, and position in the schedule."""

    def __init__(self, config: dict, data: DataBundle, device: torch.device) -> None:
        self.config = config
        self.device = device
        torch.manual_seed(config["seed"])
        self.fast = fast_paths(device.type, config["model"])
        model = build_model(config, data.image_shape, len(data.classes)).to(device)
        if self.fast.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(config, self.model.parameters())
        # The MLP trains with hand-written gradients; other models through autograd.
        self.mlp_step = (
            MLPStep(model, self.optimizer, config.get("label_smoothing", 0.0))
            if config["model"] == "mlp"
            else None
        )
        # Shuffling has its own generator so its stream is saved and restored exactly.
        self.shuffle = torch.Generator().manual_seed(config["seed"])
        # Augmentation draws on the data's device, from a stream of its own (saved too).
        self.augment_rng = torch.Generator(device=device).manual_seed(config["seed"])
        self.epoch = 0
        self.train = (as_tensor(data.train_x, device), as_tensor(data.train_y, device))
        self.val = (as_tensor(data.val_x, device), as_tensor(data.val_y, device))
        self.test = (as_tensor(data.test_x, device), as_tensor(data.test_y, device))
        if config["normalize"] == "channel":
            mean, std = torch.from_numpy(data.mean), torch.from_numpy(data.std)
        else:  # "none": scale to [0, 1] only, as the original experiment did
            mean, std = torch.zeros(len(data.mean)), torch.ones(len(data.std))
        # x_norm = (x / 255 - mean) / std = x * scale + shift, one fused op per batch, on
        # flattened images: broadcasting along the last axis only is 3x faster on a CPU than
        # per-channel (1, C, 1, 1) broadcasting.
        pixels = data.image_shape[1] * data.image_shape[2]
        self.scale = (1 / (255 * std)).repeat_interleave(pixels).view(1, -1).to(device)
        self.shift = (-mean / std).repeat_interleave(pixels).view(1, -1).to(device)
        self.batch_buffers: dict[tuple[int, int], torch.Tensor] = {}  # see `batch_buffer`

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
        return x.contiguous(memory_format=torch.channels_last) if self.fast.channels_last else x

    def batch_buffer(self, images: torch.Tensor) -> torch.Tensor:
        """The float buffer training batches of this shape are normalised into, made once.

        A fresh 768 KiB tensor each step (batch 64) cost the MLP's epoch 4-5% on 2 CPU cores.
        Each step is done with its batch before the next overwrites it."""
        shape = images.shape[0], math.prod(images.shape[1:])
        if (buffer := self.batch_buffers.get(shape)) is None:
            buffer = self.batch_buffers[shape] = torch.empty(shape, device=self.device)
        return buffer

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where `fast_paths` chose it, else nothing."""
        if self.fast.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.fast.autocast)

    def training_images(self, batch: torch.Tensor) -> torch.Tensor:
        """The training images at the indices `batch`, normalised and augmented as configured."""
        # Crops and flips on uint8, before normalising; cutout after, so its 0 is the mean.
        # index_select, not images[batch]: a tenth of the time for the same rows.
        x = self.train[0].index_select(0, batch)
        x = crop_flip(x, self.config.get("augment", "none"), self.augment_rng)
        x = self.normalise(x, out=self.batch_buffer(x))
        if self.config.get("cutout", 0):
            x = cutout(x, self.config["cutout"], self.augment_rng)
        return x

    def training_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (as `training_images` makes them) and labels at the indices `batch`."""
        return self.training_images(batch), self.train[1].index_select(0, batch)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the shuffled training split; returns loss, accuracy and its time."""
        start = time.perf_counter()
        labels = self.train[1]
        batch_size = self.config["batch_size"]
        smoothing = self.config.get("label_smoothing", 0.0)
        order = torch.randperm(len(labels), generator=self.shuffle).to(self.device)
        batches = order.split(batch_size)
        # Each step's labels, gathered once for the epoch rather than batch by batch.
        ordered_labels = labels.index_select(0, order)
        self.model.train()
        # Each step's loss and predictions stay on the device, summed once at the end: two ops
        # a step instead of six for running sums, and a host sync every DIVERGENCE_CHECK steps.
        losses: list[torch.Tensor] = []
        predictions: list[torch.Tensor] = []
        batch_labels = ordered_labels.split(batch_size)
        for step, (batch, y) in enumerate(zip(batches, batch_labels, strict=True)):
            if step % DIVERGENCE_CHECK == 0 and step and not finite(losses[-DIVERGENCE_CHECK:]):
                break  # a non-finite loss does not come back: stop the epoch now
            self.set_lr(self.epoch + step / len(batches))
            x = self.training_images(batch)
            if self.mlp_step is not None:
                loss, logits = self.mlp_step(x, y)
            else:
                loss, logits = self.autograd_step(x, y, smoothing)
            losses.append(loss.detach())
            predictions.append(logits.argmax(1))
        self.epoch += 1
        sizes = [len(batch) for batch in batches[: len(losses)]]
        seen = sum(sizes)
        weights = torch.tensor(sizes, dtype=torch.float32, device=self.device)
        train_loss = torch.stack(losses).float().dot(weights).item() / seen
        correct = (torch.cat(predictions) == ordered_labels[:seen]).sum().item()
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_acc": correct / seen,
            "epoch_time_s": time.perf_counter() - start,
            "diverged": not math.isfinite(train_loss),
        }

    def autograd_step(
        self, x: torch.Tensor, y: torch.Tensor, smoothing: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            logits = self.model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss, logits

    def set_lr(self, progress: float) -> None:
        """Set the learning rate for `progress` epochs into the run, as the schedule says."""
        lr = lr_at(self.config, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.inference_mode()
    def evaluate(self, split: str) -> dict[str, float]:
        """Mean loss and accuracy on `split` ("val" or "test") in large batches."""
        images, labels = getattr(self, split)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
            with self.autocast():
                logits = self.model(self.normalise(x))
            # The loss in float32 and without label smoothing: comparable across trials.
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
        return {
            f"{split}_loss": loss_sum.item() / len(labels),
            f"{split}_acc": correct.item() / len(labels),
        }

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: weights, optimiser, epoch and RNG streams."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "shuffle_rng": self.shuffle.get_state(),
            "augment_rng": self.augment_rng.get_state(),
            "torch_rng": torch.get_rng_state(),
            "format": CHECKPOINT_FORMAT,
            # Dropout on a GPU draws from CUDA's stream, not the CPU one above.
            **(
                {"cuda_rng": torch.cuda.get_rng_state(self.device)}
                if self.device.type == "cuda"
                else {}
            ),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        optimizer = state["optimizer"]
        if state.get("format", 1) < 2:  # saved with nn.Linear layers, by an earlier version
            # Moments of the old shape would load without complaint and update the wrong
            # elements: the fused kernels only check sizes.
            optimizer = moments_input_major(optimizer, self.optimizer, self.model)
        self.optimizer.load_state_dict(optimizer)
        # The config wins over the saved optimiser: PBT restores a checkpoint into a trial
        # whose lr and weight decay it has just changed.
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.config["weight_decay"]
        self.epoch = state["epoch"]
        self.set_lr(self.epoch)
        # RNG states must be CPU byte tensors, even where the checkpoint was mapped to a GPU.
        self.shuffle.set_state(state["shuffle_rng"].cpu())
        # A generator's state fits only a generator of its device type (a CPU one's is 5056
        # bytes, a CUDA one's 16). A GPU trial's checkpoint restored on a CPU, as
        # `evaluate_checkpoint` does on the driver, keeps the fresh stream seeded from the config.
        saved = state.get("augment_rng")  # checkpoints from before augmentation lack it
        if saved is not None and saved.numel() == self.augment_rng.get_state().numel():
            self.augment_rng.set_state(saved.cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
