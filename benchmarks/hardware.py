"""What the machine allows: its matrix-multiply peak, and the MLP's work per training sample."""

from __future__ import annotations

import time

import torch


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 10) -> float:
    """Best-of-`repeats` float32 GFLOP/s of a size^3 matrix multiply: the machine's peak."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def mlp_training_flops(inputs: int, hidden: int, classes: int) -> int:
    """Multiply-add FLOPs for one sample through forward and backward of the one-hidden-layer
    MLP: forward, weight gradients of both layers, and the hidden layer's input gradient (the
    images need none)."""
    forward = 2 * (inputs * hidden + hidden * classes)
    return forward + forward + 2 * hidden * classes


def batch_matmuls_s(batches: int, batch: int, inputs: int, hidden: int) -> float:
    """Seconds for the first layer's forward and weight-gradient products over `batches`
    batches, with nothing else running: 99% of the MLP's FLOPs, in the forms and at the shapes
    `trainable.mlp_step` runs them, which reach less of the peak than big square ones do."""
    x, weight_t = torch.randn(batch, inputs), torch.randn(inputs, hidden)
    grad_out = torch.randn(batch, hidden)
    x @ weight_t, x.t() @ grad_out  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        x @ weight_t  # forward
        x.t() @ grad_out  # the weight's gradient
    return time.perf_counter() - start
