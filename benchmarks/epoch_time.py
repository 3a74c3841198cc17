"""One training epoch's time, ours or the original pipeline's, in a process of its own.

    python benchmarks/epoch_time.py ours DATA_DIR [--threads 2] [--cache-dir DIR]
    python benchmarks/epoch_time.py original CIFAR_DIR [--threads 2]

`ours`: the grid's lr-0.001 trial through `trainable.loop.Training`, 3 epochs, each beside a
measurement of the machine's matmul peak, of the epoch's matmuls alone and of its optimiser
steps alone (medians).
`original`: torchvision's CIFAR10 dataset (a PIL image per sample, ToTensor, Normalize), a
shuffling DataLoader of batch 64, the same MLP and plain Adam, as the original experiment ran;
CIFAR_DIR holds `cifar-10-batches-py/`. Both train on 45,000 images. Prints a JSON object last.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from hardware import batch_matmuls_s, matmul_gflops, mlp_training_flops
from torch import nn


def optimizer_steps_s(
    config: dict, image_shape: tuple[int, ...], classes: int, steps: int
) -> float:
    """Seconds for `steps` updates of the trial's optimiser, as its training step makes them,
    on a fresh copy of its model, with nothing else running: the part of an epoch that is
    parameter updates."""
    from trainable.families import build_model
    from trainable.loop import make_optimizer
    from trainable.mlp_step import MLPStep

    model = build_model(config, image_shape, classes)
    step = MLPStep(model, make_optimizer(config, model.parameters()), smoothing=0.0)
    for param in model.parameters():
        param.grad.normal_()
    step.update()  # warm-up: creates the moment buffers
    start = time.perf_counter()
    for _ in range(steps):
        step.update()
    return time.perf_counter() - start


def epoch_ours(data_dir: str, cache_dir: str | None, threads: int) -> dict:
    from trainable.data import DataConfig, load_dataset
    from trainable.loop import Training
    from tuning.config import load_config
    from tuning.run.cli import REPO

    data = load_dataset(DataConfig(dir=data_dir, cache_dir=cache_dir))
    trial = load_config(REPO / "configs" / "grid.yaml").trial
    config = trial.model_copy(update={"lr": 0.001})
    training = Training(config, data, torch.device("cpu"))
    inputs = math.prod(data.image_shape)
    epoch_flops = len(data.train_y) * mlp_training_flops(inputs, trial.hidden, len(data.classes))
    batches = math.ceil(len(data.train_y) / trial.batch_size)
    rounds = []
    for _ in range(3):
        # The peak and the epoch side by side, round after round: this VM's speed drifts up to
        # 2x within minutes, and a floor measured minutes apart would not be this epoch's floor.
        floor = epoch_flops / (matmul_gflops(threads, repeats=5) * 1e9)
        matmuls = batch_matmuls_s(batches, trial.batch_size, inputs, trial.hidden)
        updates = optimizer_steps_s(config, data.image_shape, len(data.classes), batches)
        epoch = training.train_epoch()["epoch_time_s"]
        rounds.append(
            {
                "epoch_s": epoch,
                "floor_epoch_s": floor,
                "matmuls_epoch_s": matmuls,
                "optimizer_epoch_s": updates,
            }
        )
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    return {
        **median,
        "matmul_gflops": epoch_flops / median["floor_epoch_s"] / 1e9,
        "floor_ratio": statistics.median(r["epoch_s"] / r["floor_epoch_s"] for r in rounds),
        "rounds": rounds,
    }


def epoch_original(cifar_dir: str) -> float:
    from torch.utils.data import DataLoader
    from tutorial_grid import BATCH_SIZE, original_mlp, original_splits

    torch.manual_seed(0)
    train, _, _ = original_splits(cifar_dir)
    loader = DataLoader(train, batch_size=BATCH_SIZE, shuffle=True)
    model = original_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for images, labels in loader:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("way", choices=["ours", "original"])
    parser.add_argument("data_dir")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.way == "ours":
        measured = epoch_ours(args.data_dir, args.cache_dir, args.threads)
    else:
        measured = {"epoch_s": epoch_original(args.data_dir)}
    print(json.dumps(measured))


if __name__ == "__main__":
    main()
