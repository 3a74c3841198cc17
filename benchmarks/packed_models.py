"""Would training K MLPs in one process on one batch stream buy more trials per CPU-second?

    python benchmarks/packed_models.py --data-dir /tmp/cifar10 --hidden 128 1024

One thread, one epoch each, in this process: our training loop (`trainable.loop.Training`,
one model) against K models packed into one: their first layers concatenated into one
(3072 × K·hidden) matrix product over the shared batch, their second layers one batched matrix
product, one fused Adam over the stacked parameters (HFTA's idea, Wang et al., MLSys 2021).
Prints K × (our epoch) / (packed epoch): the throughput packing would buy. Each K shares the
batch order and augmentation, which separate trials would not: the measure is an upper bound.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path[0] = str(Path(__file__).resolve().parents[1])

from trainable.data import DataConfig, load_dataset  # noqa: E402
from trainable.loop import Training  # noqa: E402
from trainable.settings import TrialConfig  # noqa: E402


def ours(data, hidden: int, batch: int) -> float:
    training = Training(TrialConfig(hidden=hidden, batch_size=batch), data, torch.device("cpu"))
    start = time.perf_counter()
    training.train_epoch()
    return time.perf_counter() - start


def packed(data, hidden: int, batch: int, k: int) -> float:
    torch.manual_seed(0)
    inputs, classes = data.train_x[0].size, len(data.classes)
    w1 = (torch.randn(inputs, k * hidden) / inputs**0.5).requires_grad_()
    b1 = torch.zeros(k * hidden, requires_grad=True)
    w2 = (torch.randn(k, hidden, classes) / hidden**0.5).requires_grad_()
    b2 = torch.zeros(k, 1, classes, requires_grad=True)
    optimizer = torch.optim.Adam([w1, b1, w2, b2], lr=1e-3, fused=True)
    images = torch.from_numpy(data.train_x).flatten(1)
    labels = torch.from_numpy(data.train_y)
    mean, std = images.float().mean() / 255, images.float().std() / 255
    start = time.perf_counter()
    for index in torch.randperm(len(labels)).split(batch):
        x = (images.index_select(0, index).float() / 255 - mean) / std
        h = F.relu(torch.addmm(b1, x, w1)).view(len(index), k, hidden).transpose(0, 1)
        logits = torch.baddbmm(b2, h, w2)  # (k, batch, classes)
        y = labels.index_select(0, index).repeat(k)
        loss = F.cross_entropy(logits.reshape(-1, classes), y) * k
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(DataConfig(dir=args.data_dir))
    print(
        "| hidden | batch | our epoch | "
        + " | ".join(f"K={k}: epoch (gain)" for k in args.k)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(args.k))
    for hidden in args.hidden:
        for batch in args.batch:
            one = ours(data, hidden, batch)
            cells = []
            for k in args.k:
                seconds = packed(data, hidden, batch, k)
                cells.append(f"{seconds:.2f} s ({k * one / seconds:.2f}x)")
            print(f"| {hidden} | {batch} | {one:.2f} s | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
