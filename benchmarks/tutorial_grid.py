"""Baseline: the seed-0 learning-rate grid run the way Ray Tune's PyTorch tutorial does it.

A function trainable in which every trial builds its own per-sample torchvision CIFAR10
Dataset (PIL image → ToTensor → Normalize) and DataLoader, trains the MLP and calls
``tune.report`` with a checkpoint each epoch. The run (ray.init to collected results) is timed.

An image-folder data dir is first converted, untimed, into torchvision's pickled
``cifar-10-batches-py`` layout in a temporary folder, so the trials read data exactly as the
tutorial's do (in-memory arrays, per-sample PIL); JPEG-re-encoded pixels do not match the
original files' checksums, so the check is skipped.

    python benchmarks/tutorial_grid.py --data-dir /tmp/data/cifar10 --json tutorial_grid.json

Quick check (1 epoch, 2000 training images per trial):

    python benchmarks/tutorial_grid.py --data-dir /tmp/data/cifar10 --epochs 1 --subset 2000
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import tempfile
import time
from typing import Any

import ray
import torch
from ray import tune
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import datasets, transforms

LEARNING_RATES = [0.001, 0.0001, 0.01]
BATCH_SIZE = 64


def evaluate(model: nn.Module, loader: DataLoader) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            outputs = model(images)
            loss_sum += nn.functional.cross_entropy(outputs, labels, reduction="sum").item()
            correct += (outputs.argmax(1) == labels).sum().item()
            seen += labels.size(0)
    return loss_sum / seen, correct / seen


class UncheckedCIFAR10(datasets.CIFAR10):
    # md5 None: torchvision only checks that the files exist (re-encoded pixels differ from the
    # original files' md5 sums).
    train_list = [[name, None] for name, _ in datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in datasets.CIFAR10.test_list]
    meta = {**datasets.CIFAR10.meta, "md5": None}


def as_torchvision_files(data_dir: str, into: str) -> str:
    """`data_dir` if it holds torchvision's files, else a copy of it in their pickled layout."""
    if os.path.isdir(os.path.join(data_dir, "cifar-10-batches-py")):
        return data_dir
    from trainable.data import DataConfig, load_dataset

    data = load_dataset(DataConfig(dir=data_dir, val_size=0))
    folder = os.path.join(into, "cifar-10-batches-py")
    os.makedirs(folder)
    train_x, train_y = data.train_x.reshape(len(data.train_y), -1), data.train_y.tolist()
    parts = [(f"data_batch_{i + 1}", slice(i * 10000, (i + 1) * 10000)) for i in range(5)]
    for name, rows in parts:
        batch = {"data": train_x[rows], "labels": train_y[rows]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    test = {"data": data.test_x.reshape(len(data.test_y), -1), "labels": data.test_y.tolist()}
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(test, f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": data.classes}, f)
    return into


# The original experiment's per-sample pipeline: a PIL image → ToTensor → Normalize.
TRANSFORM = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
)


def original_splits(cifar_dir: str) -> tuple[Dataset, Dataset, Dataset]:
    """Train (45,000), validation (5,000) and test sets as the original builds them."""
    full = UncheckedCIFAR10(cifar_dir, train=True, transform=TRANSFORM)
    train, val = random_split(full, [45000, 5000], generator=torch.Generator().manual_seed(0))
    return train, val, UncheckedCIFAR10(cifar_dir, train=False, transform=TRANSFORM)


def original_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))


def train_fn(config: dict[str, Any]) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_set, val_set, test_set = original_splits(config["data_dir"])
    if config["subset"]:
        train_set = Subset(train_set, range(config["subset"]))
    workers = config["num_workers"]
    train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
    val_loader = DataLoader(val_set, batch_size=BATCH_SIZE, num_workers=workers)

    model = original_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    criterion = nn.CrossEntropyLoss()

    for epoch in range(1, config["epochs"] + 1):
        model.train()
        loss_sum, seen = 0.0, 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * labels.size(0)
            seen += labels.size(0)
        val_loss, val_acc = evaluate(model, val_loader)
        metrics = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
        }
        if epoch == config["epochs"]:
            test_loader = DataLoader(test_set, batch_size=BATCH_SIZE, num_workers=workers)
            metrics["test_acc"] = evaluate(model, test_loader)[1]
        with tempfile.TemporaryDirectory() as tmpdir:
            torch.save(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                os.path.join(tmpdir, "checkpoint.pt"),
            )
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmpdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subset", type=int, default=None)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    storage = tempfile.mkdtemp(prefix="tutorial_grid_")
    param_space = {
        "lr": tune.grid_search(LEARNING_RATES),
        # Trials run with the trial directory as cwd, so the data path must be absolute.
        "data_dir": os.path.abspath(as_torchvision_files(args.data_dir, storage)),
        "epochs": args.epochs,
        "subset": args.subset,
        "num_workers": args.num_workers,
    }
    try:
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        tuner = tune.Tuner(
            tune.with_resources(train_fn, {"cpu": 1}),
            param_space=param_space,
            tune_config=tune.TuneConfig(metric="val_acc", mode="max"),
            run_config=tune.RunConfig(storage_path=storage, name="tutorial_grid"),
        )
        results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"{len(results.errors)} trial(s) failed: {results.errors[0]}")
        trials = sorted(
            ({"lr": r.config["lr"], "test_acc": r.metrics["test_acc"]} for r in results),
            key=lambda t: LEARNING_RATES.index(t["lr"]),
        )
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)

    print(f"tutorial-way grid: {len(trials)} trials x {args.epochs} epochs, wall {wall:.1f} s")
    for trial in trials:
        print(f"  lr={trial['lr']:g}  test_acc={trial['test_acc']:.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"wall_s": wall, "trials": trials}, f, indent=2)


if __name__ == "__main__":
    main()
