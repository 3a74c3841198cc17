"""A trial's checkpoint: everything needed to continue training exactly, as one file.

Ray's restore of a class trainable unpickles `_dict_checkpoint.pkl` when a checkpoint folder
holds one, before `load_checkpoint` sees the folder: a file dropped into the storage would run
as code in a worker. This project writes only `state.pt` (loaded with `weights_only=True`), and
`check_checkpoint_folder` refuses a folder holding anything else.
"""

from __future__ import annotations

import os

import pyarrow.fs
import torch

from trainable.lookahead import Lookahead
from trainable.loop import Training

CHECKPOINT_FILE = "state.pt"


def training_state(training: Training) -> dict:
    """Weights, optimiser, epoch and every random stream of `training`."""
    return {
        "model": training.model.state_dict(),
        "optimizer": training.optimizer.state_dict(),
        "epoch": training.epoch,
        "shuffle_rng": training.shuffle.get_state(),
        "augment_rng": training.data.augment_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        **({"lookahead": training.lookahead.slow} if training.lookahead is not None else {}),
        # Dropout on a GPU draws from CUDA's stream, not the CPU one above.
        **(
            {"cuda_rng": torch.cuda.get_rng_state(training.device)}
            if training.device.type == "cuda"
            else {}
        ),
    }


def restore_training(training: Training, state: dict) -> None:
    """Continue `training` from `state`, as `training_state` made it."""
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    # The trial's settings win over the saved optimiser: PBT restores a checkpoint into a trial
    # whose lr and weight decay it has just changed.
    for group in training.optimizer.param_groups:
        group["weight_decay"] = training.trial.weight_decay
    training.epoch = state["epoch"]
    if training.lookahead is not None:
        if "lookahead" in state:
            training.lookahead.restore(state["lookahead"])
        else:  # saved without one (PBT turned it on): the slow copy starts from these weights
            training.lookahead = Lookahead(training.model)
    training.set_lr(training.epoch)
    # RNG states must be CPU byte tensors, even where the checkpoint was mapped to a GPU.
    training.shuffle.set_state(state["shuffle_rng"].cpu())
    # A generator's state fits only a generator of its device type (a CPU one's is 5056 bytes,
    # a CUDA one's 16). A GPU trial's checkpoint restored on a CPU, as `evaluate_checkpoint`
    # does on the driver, keeps the fresh stream seeded from the trial's settings.
    augment_rng = training.data.augment_rng
    if state["augment_rng"].numel() == augment_rng.get_state().numel():
        augment_rng.set_state(state["augment_rng"].cpu())
    torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and training.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), training.device)


def save(state: dict, checkpoint_dir: str) -> None:
    torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))


def load(checkpoint_dir: str, device: torch.device) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    path = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
    return torch.load(path, map_location=device, weights_only=True)


# Ours, and Ray's checkpoint metadata (JSON, never code): all a checkpoint folder may hold.
EXPECTED = frozenset({CHECKPOINT_FILE, ".metadata.json"})


class ForeignCheckpointFile(RuntimeError):
    """A checkpoint folder holds a file this project did not write; restoring is refused."""


def check_checkpoint_folder(checkpoint: object) -> None:
    """ForeignCheckpointFile naming every file or folder in the checkpoint folder that the
    project did not write. `checkpoint`: what Tune's `Trainable.restore` takes (a folder path,
    a `tune.Checkpoint`, or a training result holding one)."""
    checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
    if isinstance(checkpoint, str):
        fs, path = pyarrow.fs.LocalFileSystem(), checkpoint
    else:
        fs, path = checkpoint.filesystem, checkpoint.path
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    foreign = sorted(info.path for info in listing if info.base_name not in EXPECTED)
    if foreign:
        raise ForeignCheckpointFile(
            f"refusing to restore from checkpoint {path}: it holds files this project did not "
            f"write ({', '.join(foreign)}), and Ray would unpickle some of them. Remove them, and "
            "make the run's storage writable only by trusted users"
        )
