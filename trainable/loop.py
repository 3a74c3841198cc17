"""The epoch loop: index batches over in-memory uint8 tensors, normalised on the device."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainable.augment import translate
from trainable.data import DataBundle
from trainable.device_data import DeviceData
from trainable.eager import skip_compiler_marks
from trainable.families import FAMILIES, build_model
from trainable.lookahead import Lookahead
from trainable.schedules import lr_at
from trainable.settings import TrialConfig
from trainable.steps import make_step

# Evaluation needs no gradients, so large batches cost fewer dispatches; 1024 keeps a trial's
# transient memory small (a 1024-image float batch is 12 MiB).
EVAL_BATCH = 1024
DIVERGENCE_CHECK = 50  # steps between looks at the running loss: a host sync each time
# Training images that layers set from the data see (airbench's whitening: 5000 images' patches).
FIT_IMAGES = 5000

# Test-time augmentation: each view ((down, right) shift in pixels, mirrored) and its weight.
# flip_translate is airbench's: the image and its mirror at half the weight, the same one
# pixel up-left and one down-right at a quarter.
TTA_VIEWS: dict[str, list[tuple[tuple[int, int, bool], float]]] = {
    "none": [((0, 0, False), 1.0)],
    "flip": [((0, 0, False), 0.5), ((0, 0, True), 0.5)],
    "flip_translate": [
        ((0, 0, False), 0.25), ((0, 0, True), 0.25),
        ((-1, -1, False), 0.125), ((-1, -1, True), 0.125),
        ((1, 1, False), 0.125), ((1, 1, True), 0.125),
    ],
}  # fmt: skip


def finite(losses: list[torch.Tensor]) -> bool:
    """Whether every loss in `losses` is finite (a host sync)."""
    return bool(torch.stack(losses).isfinite().all())


def make_optimizer(trial: TrialConfig, params) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters; on a CPU Adam's step is several times faster than
    # the default per-parameter one.
    skip_compiler_marks()  # nothing here compiles: keep torch._dynamo's import out (eager.py)
    lr, decay = trial.lr, trial.weight_decay
    if trial.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, fused=True)
    if trial.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, fused=True)
    return torch.optim.SGD(
        params, lr=lr, momentum=trial.momentum, nesterov=True, weight_decay=decay, fused=True
    )


@dataclass(frozen=True)
class FastPaths:
    """Memory layout and precision for a model on a device."""

    channels_last: bool
    autocast: torch.dtype | None  # None: full float32


@functools.cache
def cpu_multiplies_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this machine's CPU has bf16 matrix units (Intel AMX), which oneDNN runs bf16
    convolutions on: the kernel's CPU flags (Linux; elsewhere, no)."""
    try:
        with open(cpuinfo) as file:
            # every core repeats the same flags line: the first one says it
            flags = next((line.split() for line in file if line.startswith("flags")), [])
    except OSError:
        return False
    return "amx_bf16" in flags


def fast_paths(device_type: str, convolutional: bool) -> FastPaths:
    """What speeds up a built-in family on `device_type` without costing accuracy.

    Convolutions only: channels-last lets cuDNN and oneDNN pick their fastest kernels (on
    2 CPU cores the CNN's training step is 1.2× faster); bf16 autocast where the hardware
    multiplies bf16 natively: CUDA's tensor cores, a CPU's AMX units (2.6× faster epochs on
    2 cores, the same accuracy). A CPU without them would emulate bf16 slowly. The MLP is a
    few matrix products: neither helps it, and its results stay bit-identical.
    """
    if not convolutional:
        return FastPaths(channels_last=False, autocast=None)
    bf16 = device_type == "cuda" or (device_type == "cpu" and cpu_multiplies_bf16())
    return FastPaths(channels_last=True, autocast=torch.bfloat16 if bf16 else None)


def fit_to_data(model: torch.nn.Module, data: DeviceData) -> None:
    """Let each layer that has a `fit_to_data(images)` method (airbench's whitening; a user's
    model may have them too) set itself from the first FIT_IMAGES normalised training images."""
    layers = [layer for layer in model.modules() if callable(getattr(layer, "fit_to_data", None))]
    if layers:
        images = data.normalise(data.train[0][:FIT_IMAGES])
        for layer in layers:
            layer.fit_to_data(images)


def epoch_hooks(model: torch.nn.Module) -> list[Callable[[int], None]]:
    """The `start_epoch(epoch)` methods of `model`'s layers that have one (airbench's whitening:
    its bias stops training after a few epochs), called as each epoch (from 0) begins."""
    return [
        layer.start_epoch
        for layer in model.modules()
        if callable(getattr(layer, "start_epoch", None))
    ]


class Training:
    """One trial's model, optimiser and step, its data on the device, and its epoch count."""

    def __init__(self, trial: TrialConfig, data: DataBundle, device: torch.device) -> None:
        self.trial = trial
        self.device = device
        torch.manual_seed(trial.seed)
        family = FAMILIES.get(trial.model)
        self.fast = fast_paths(device.type, family is not None and family.convolutional)
        model = build_model(trial, data.image_shape, len(data.classes)).to(device)
        if self.fast.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = make_optimizer(trial, self.model.parameters())
        autocast = self.autocast if self.fast.autocast is not None else None
        self.step = make_step(model, self.optimizer, trial.label_smoothing, autocast)
        # Shuffling has its own generator so its stream is saved and restored exactly.
        self.shuffle = torch.Generator().manual_seed(trial.seed)
        self.data = DeviceData(data, device, trial, self.fast.channels_last)
        fit_to_data(model, self.data)
        # After the fit: the slow copy starts from the model as it first trains.
        self.lookahead = Lookahead(model) if trial.lookahead else None
        self.epoch_hooks = epoch_hooks(model)
        self.epoch = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast where `fast_paths` chose it, else nothing."""
        if self.fast.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.fast.autocast)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the shuffled training split; returns loss, accuracy and its time."""
        start = time.perf_counter()
        labels = self.data.train[1]
        batch_size = self.trial.batch_size
        order = torch.randperm(len(labels), generator=self.shuffle).to(self.device)
        batches = order.split(batch_size)
        # Each step's labels, gathered once for the epoch rather than batch by batch.
        ordered_labels = labels.index_select(0, order)
        self.model.train()
        for hook in self.epoch_hooks:
            hook(self.epoch)
        # Each step's loss and predictions stay on the device, summed once at the end: two ops
        # a step instead of six for running sums, and a host sync every DIVERGENCE_CHECK steps.
        losses: list[torch.Tensor] = []
        predictions: list[torch.Tensor] = []
        batch_labels = ordered_labels.split(batch_size)
        for step, (batch, y) in enumerate(zip(batches, batch_labels, strict=True)):
            if step % DIVERGENCE_CHECK == 0 and step and not finite(losses[-DIVERGENCE_CHECK:]):
                break  # a non-finite loss does not come back: stop the epoch now
            self.set_lr(self.epoch + step / len(batches))
            images, mix = self.data.mixed(self.data.training_images(batch), y)
            loss, logits = self.step(images, y, mix)
            losses.append(loss.detach())
            predictions.append(logits.argmax(1))
            if self.lookahead is not None:
                steps = self.trial.epochs * len(batches)
                self.lookahead.after_step(self.epoch * len(batches) + step + 1, steps)
        self.epoch += 1
        if self.lookahead is not None and self.epoch == self.trial.epochs:
            self.lookahead.finish()
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

    def set_lr(self, progress: float) -> None:
        """Set the learning rate for `progress` epochs into the run, as the schedule says."""
        lr = lr_at(self.trial, progress)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """The model's log-probabilities (float32) for uint8 `images`, with the trial's
        test-time augmentation: the weighted mean of the distributions of its views."""
        views = TTA_VIEWS[self.trial.tta]
        terms = []
        for (down, right, mirror), weight in views:
            x = translate(images, down, right) if down or right else images
            with self.autocast():
                logits = self.model(self.data.normalise(x.flip(3) if mirror else x))
            log_probs = logits.float().log_softmax(1)
            terms.append(log_probs if weight == 1 else log_probs + math.log(weight))
        return terms[0] if len(terms) == 1 else torch.stack(terms).logsumexp(0)

    @torch.inference_mode()
    def evaluate(self, split: str) -> dict[str, float]:
        """Mean loss and accuracy on `split` ("val" or "test") in large batches."""
        images, labels = getattr(self.data, split)
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        for x, y in zip(images.split(EVAL_BATCH), labels.split(EVAL_BATCH), strict=True):
            # The loss in float32 and without label smoothing: comparable across trials.
            log_probs = self.log_probs(x)
            loss_sum += F.nll_loss(log_probs, y, reduction="sum")
            correct += (log_probs.argmax(1) == y).sum()
        return {
            f"{split}_loss": loss_sum.item() / len(labels),
            f"{split}_acc": correct.item() / len(labels),
        }
