"""One training epoch's time, ours or the original pipeline's, in a process of its own.

    python benchmarks/epoch_time.py ours DATA_DIR [--threads 2] [--cache-dir DIR]
    python benchmarks/epoch_time.py original CIFAR_DIR [--threads 2]

`ours`: the grid's lr-0.001 trial through `trainable.loop.Training` (median of 3 epochs).
`original`: torchvision's CIFAR10 dataset (a PIL image per sample, ToTensor, Normalize), a
shuffling DataLoader of batch 64, the same MLP and plain Adam, as the original experiment ran;
CIFAR_DIR holds `cifar-10-batches-py/`. Both train on 45,000 images. Prints seconds last.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn


def epoch_ours(data_dir: str, cache_dir: str | None) -> float:
    from trainable.data import DataSpec, load_dataset
    from trainable.loop import Training
    from tuning.cli import REPO
    from tuning.config import load_config

    data = load_dataset(DataSpec(dir=data_dir, cache_dir=cache_dir))
    trial = load_config(REPO / "configs" / "grid.yaml").trial
    training = Training({**trial.model_dump(), "lr": 0.001}, data, torch.device("cpu"))
    return statistics.median(training.train_epoch()["epoch_time_s"] for _ in range(3))


def epoch_original(cifar_dir: str) -> float:
    from torch.utils.data import DataLoader, random_split
    from torchvision import transforms
    from tutorial_grid import UncheckedCIFAR10

    torch.manual_seed(0)
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )
    full = UncheckedCIFAR10(cifar_dir, train=True, transform=transform)
    train, _ = random_split(full, [45000, 5000], generator=torch.Generator().manual_seed(0))
    loader = DataLoader(train, batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))
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
        seconds = epoch_ours(args.data_dir, args.cache_dir)
    else:
        seconds = epoch_original(args.data_dir)
    print(f"{args.way} epoch: {seconds:.3f}")


if __name__ == "__main__":
    main()
