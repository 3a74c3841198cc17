"""The Ray Tune adapter: one trial = one `CifarTrainable` actor; `step` = one epoch."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import ray
import torch
from ray import tune

from trainable import checkpoint
from trainable.data import DataBundle
from trainable.loop import Training
from trainable.settings import TrialConfig


@dataclass(frozen=True)
class SharedData:
    """A `DataBundle` the driver put in Ray's object store itself, so that it can read the
    same copy as the trials (`tuning.run.tuner.share_data`) instead of keeping its own."""

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


def evaluate_checkpoint(
    saved: tune.Checkpoint, config: dict, data: DataBundle, split: str = "test"
) -> dict[str, float]:
    """Loss and accuracy on `split` of the model a trial saved in `saved`."""
    training = Training(TrialConfig.model_validate(config), data, torch.device("cpu"))
    with saved.as_directory() as checkpoint_dir:
        checkpoint.restore_training(training, checkpoint.load(checkpoint_dir, training.device))
    return training.evaluate(split)


def ignore_exit_in_finalizers(unraisable: sys.UnraisableHookArgs) -> None:
    """`sys.unraisablehook` for trial actors: drop a SystemExit raised inside a finalizer.

    When the run ends, Ray stops each actor's worker with SIGTERM, and its handler raises
    SystemExit wherever the worker's Python code is. Inside a weakref callback Python cannot
    raise it and prints "Exception ignored ... SystemExit: 1" instead, which Ray forwards to
    the driver's console; the worker exits regardless. Every other unraisable still prints."""
    if unraisable.exc_type is not SystemExit:
        sys.__unraisablehook__(unraisable)


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
        if ray.get_runtime_context().get_actor_id():  # a process of its own, not a driver's
            sys.unraisablehook = ignore_exit_in_finalizers
        # A thread per whole CPU Ray gave the trial, or concurrent trials oversubscribe the cores.
        torch.set_num_threads(max(1, int(cpus)))
        self.data = data.get()
        self.evaluate_test = evaluate_test
        self.device = choose_device()
        self.training = Training(TrialConfig.model_validate(config), self.data, self.device)
        self.final_metrics: dict | None = None  # the last epoch's report, once the trial ends
        # Where the trial runs, in every result (Tune adds `hostname`): trials.parquet keeps it.
        self.placement = {
            "node_id": ray.get_runtime_context().get_node_id(),
            "device": device_label(self.device),
            "threads": torch.get_num_threads(),
        }

    def step(self) -> dict:
        if self.final_metrics is not None:
            # Restored from its own last checkpoint (a crash or an interrupted run between that
            # checkpoint and Tune recording the end): report the last epoch again, train no more.
            return dict(self.final_metrics)
        metrics = {**self.training.train_epoch(), **self.placement}
        if len(self.data.val_y):
            # Even after divergence: schedulers and searchers need the metric in every result.
            metrics.update(self.training.evaluate("val"))
        if metrics["diverged"]:
            # A non-finite loss cannot recover: end the trial rather than train on NaNs.
            metrics["done"] = True
        elif self.training.epoch >= self.training.trial.epochs:
            if self.evaluate_test:
                metrics.update(self.training.evaluate("test"))
            metrics["done"] = True
        if metrics.get("done"):
            self.final_metrics = dict(metrics)  # a copy: Tune adds its own keys to the result
        return metrics

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        state = checkpoint.training_state(self.training)
        if self.final_metrics is not None:
            # Whose: PBT may restore another trial from this checkpoint, which must train on.
            state["final"] = {"trial_id": self.trial_id, "metrics": self.final_metrics}
        checkpoint.save(state, checkpoint_dir)

    def restore(self, checkpoint_path):
        checkpoint.check_checkpoint_folder(checkpoint_path)  # before Tune unpickles anything
        return super().restore(checkpoint_path)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        state = checkpoint.load(checkpoint_dir, self.device)
        checkpoint.restore_training(self.training, state)
        final = state.get("final")
        own = final is not None and final["trial_id"] == self.trial_id
        self.final_metrics = final["metrics"] if own else None

    def reset_config(self, new_config: dict) -> bool:
        """Reuse this actor for another trial (`reuse_actors`, PBT): a fresh model, same data."""
        self.training = Training(TrialConfig.model_validate(new_config), self.data, self.device)
        self.final_metrics = None
        return True

    def __repr__(self) -> str:
        # The Ray dashboard lists actors by repr: make each trial's row recognisable. Ray reads
        # it before setup too, when the trial id is not known yet (None then).
        config = getattr(self, "config", None) or {}
        shown = ", ".join(
            f"{k}={config[k]}" for k in ("model", "lr", "batch_size", "seed") if k in config
        )
        return f"CifarTrainable({getattr(self, 'trial_id', None)}: {shown})"
