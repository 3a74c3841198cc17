"""The Ray Tune adapter: one trial = one `CifarTrainable` actor; `step` = one epoch."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray
import torch
from ray import tune

# DeveloperAPI, as ray.available_resources is, but per node: a cluster-wide count would lend a
# trial the CPUs of other machines.
from ray._private.state import available_resources_per_node, total_resources_per_node

from trainable.checkpoint_files import check_checkpoint_folder
from trainable.data import DataBundle
from trainable.loop import Training

CHECKPOINT_FILE = "state.pt"


@dataclass(frozen=True)
class SharedData:
    """A `DataBundle` the driver put in Ray's object store itself, so that it can read the
    same copy as the trials (`tuning.runner.share_data`) instead of keeping its own."""

    ref: ray.ObjectRef

    def get(self) -> DataBundle:
        return ray.get(self.ref)  # zero-copy: read-only views of the object-store pages


def choose_device() -> torch.device:
    """CUDA when Ray gave this trial a GPU (and CUDA works), else the CPU."""
    if ray.get_gpu_ids() and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def device_label(device: torch.device) -> str:
    """`cpu`, or `cuda:<id>` with the id of the GPU Ray gave the trial on its node."""
    return f"cuda:{ray.get_gpu_ids()[0]}" if device.type == "cuda" else device.type


def threads_to_use(cpus: float, take_idle: bool = True) -> int:
    """A thread per whole CPU the trial holds (at least one), plus, with `take_idle`, its share
    of the CPUs on its node that Ray has given to no one.

    The tail of a run, and trials a scheduler stopped, leave cores idle that the trials still
    training can use. The idle CPUs are shared out in proportion to the CPUs each trial holds,
    so the trials on a node never run more threads than it has CPUs. Ray's view of the node
    lags by about a second, and a trial looks again at every epoch."""
    entitled = cpus
    if take_idle:
        node = ray.get_runtime_context().get_node_id()
        idle = available_resources_per_node().get(node, {}).get("CPU", 0.0)
        held = total_resources_per_node().get(node, {}).get("CPU", 0.0) - idle
        entitled += idle * cpus / held if held > 0 else 0.0
        entitled = min(entitled, len(os.sched_getaffinity(0)))
    return max(1, int(entitled))


def load_state(checkpoint_dir: str, device: torch.device) -> dict:
    # weights_only: a checkpoint is data, never code to run.
    path = os.path.join(checkpoint_dir, CHECKPOINT_FILE)
    return torch.load(path, map_location=device, weights_only=True)


def evaluate_checkpoint(
    checkpoint: tune.Checkpoint, config: dict, data: DataBundle, split: str = "test"
) -> dict[str, float]:
    """Loss and accuracy on `split` of the model a trial saved in `checkpoint`."""
    training = Training(config, data, torch.device("cpu"))
    with checkpoint.as_directory() as checkpoint_dir:
        training.load_state_dict(load_state(checkpoint_dir, training.device))
    return training.evaluate(split)


class CifarTrainable(tune.Trainable):
    """Trains one configuration, reporting the DESIGN.md metrics once per epoch.

    Built with `tune.with_parameters(CifarTrainable, data=..., cpus=..., evaluate_test=...)`,
    `data` a `SharedData`: the arrays reach every trial from the object store, and run settings
    stay out of `param_space`.
    """

    def setup(
        self,
        config: dict,
        data: SharedData,
        cpus: float = 1,
        evaluate_test: bool = True,
    ) -> None:
        """`cpus`: the CPUs Ray gave the trial. `evaluate_test`: report test accuracy at the last
        epoch (a grid's table); a search leaves the test set to judge only the configuration it
        chooses."""
        # One thread per CPU Ray gave the trial, or concurrent trials oversubscribe the cores.
        self.cpus = cpus
        torch.set_num_threads(threads_to_use(cpus, take_idle=False))
        self.data = data.get()
        self.evaluate_test = evaluate_test
        self.device = choose_device()
        self.training = Training(config, self.data, self.device)
        self.final_metrics: dict | None = None  # the last epoch's report, once the trial ends
        # Where the trial runs, in every result (Tune adds `hostname`): trials.parquet keeps it.
        self.placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": device_label(self.device),
        }

    def step(self) -> dict:
        if self.final_metrics is not None:
            # Restored from its own last checkpoint (a crash or an interrupted run between that
            # checkpoint and Tune recording the end): report the last epoch again, train no more.
            return dict(self.final_metrics)
        # The MLP's hand-written step gives the same bits at 1, 2 or 4 threads (tested), so it
        # may take up idle cores; other models' kernels round differently with more threads,
        # and their results would depend on when other trials ended.
        borrow = self.device.type == "cpu" and self.training.mlp_step is not None
        torch.set_num_threads(threads_to_use(self.cpus, take_idle=borrow))
        metrics = {
            **self.training.train_epoch(),
            **self.placement,
            "threads": torch.get_num_threads(),
        }
        if len(self.data.val_y):
            # Even after divergence: schedulers and searchers need the metric in every result.
            metrics.update(self.training.evaluate("val"))
        if metrics["diverged"]:
            # A non-finite loss cannot recover: end the trial rather than train on NaNs.
            metrics["done"] = True
        elif self.training.epoch >= self.config["epochs"]:
            if self.evaluate_test:
                metrics.update(self.training.evaluate("test"))
            metrics["done"] = True
        if metrics.get("done"):
            self.final_metrics = dict(metrics)  # a copy: Tune adds its own keys to the result
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = self.training.state_dict()
        if self.final_metrics is not None:
            # Whose: PBT may restore another trial from this checkpoint, which must train on.
            state["final"] = {"trial_id": self.trial_id, "metrics": self.final_metrics}
        torch.save(state, os.path.join(checkpoint_dir, CHECKPOINT_FILE))

    def restore(self, checkpoint_path):
        check_checkpoint_folder(checkpoint_path)  # before Tune unpickles anything in it
        return super().restore(checkpoint_path)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = load_state(checkpoint_dir, self.device)
        self.training.load_state_dict(state)
        final = state.get("final")
        own = final is not None and final["trial_id"] == self.trial_id
        self.final_metrics = final["metrics"] if own else None

    def reset_config(self, new_config: dict) -> bool:
        """Reuse this actor for another trial (`reuse_actors`, PBT): a fresh model, same data."""
        self.training = Training(new_config, self.data, self.device)
        self.final_metrics = None
        return True

    def __repr__(self) -> str:
        # The Ray dashboard lists actors by repr: make each trial's row recognisable.
        config = getattr(self, "config", None) or {}
        shown = ", ".join(
            f"{k}={config[k]}" for k in ("model", "lr", "batch_size", "seed") if k in config
        )
        return f"CifarTrainable({getattr(self, '_trial_info', None) and self.trial_id}: {shown})"
