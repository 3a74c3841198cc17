"""The MLP's training step with its gradients written out by hand: no autograd graph per step.

An MLP is a few matrix products. At batch 64 on 2 CPU cores, building and walking autograd's
graph and allocating and zeroing gradients cost about as much as the products themselves;
here the forward keeps what the backward needs, and each gradient is written into a buffer
made once. It is the same maths as autograd on `models.mlp` (tests/test_mlp_step.py holds
the gradients to autograd's), with dropout drawing the same random numbers as nn.Dropout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.adam import adam

from trainable.models import InputMajorLinear


class MLPStep:
    """Forward, cross-entropy and backward for an MLP built by `models.mlp`, then the
    optimiser's step."""

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, smoothing: float):
        self.linears = [m for m in model if isinstance(m, InputMajorLinear)]
        self.dropout = next((m.p for m in model if isinstance(m, nn.Dropout)), 0.0)
        self.smoothing = smoothing
        self.optimizer = optimizer
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        self._adam_state: dict | None = None  # the optimiser state `_adam_lists` was built from
        self._adam_lists: tuple = ()

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on a batch; returns its mean loss and its logits."""
        loss, logits = self.backward(images, labels)
        self.update()
        return loss, logits

    def update(self) -> None:
        """The optimiser's step on the gradients `backward` wrote.

        Fused Adam and AdamW go straight to torch.optim's functional `adam`, on the optimiser's
        own state and hyperparameters (lr is set every step): the same kernel and the same
        state as `optimizer.step()`, without its per-call bookkeeping, a twentieth of a
        batch-64 step on 2 CPU cores. The first step, which creates the state, and every other
        optimiser go through `optimizer.step()`.
        """
        optimizer = self.optimizer
        group = optimizer.param_groups[0]
        direct = isinstance(optimizer, torch.optim.Adam) and group["fused"] and optimizer.state
        if not direct or group["amsgrad"] or "decoupled_weight_decay" not in group:
            optimizer.step()
            return
        if self._adam_state is not optimizer.state:  # first use, or a checkpoint was loaded
            self._adam_state = optimizer.state
            params = group["params"]
            states = [optimizer.state[p] for p in params]
            self._adam_lists = (
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],  # max_exp_avg_sqs: amsgrad only
                [s["step"] for s in states],
            )
        beta1, beta2 = group["betas"]
        adam(
            *self._adam_lists,
            fused=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
        )

    @torch.no_grad()
    def backward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and logits of the batch; every parameter's `.grad` set to the gradient."""
        inputs: list[torch.Tensor] = []  # each layer's input, for its weight gradient
        masks: list[torch.Tensor | None] = []  # dropout's scaled keep-masks, hidden layers only
        h = images.flatten(1)
        for layer in self.linears[:-1]:
            inputs.append(h)
            h = torch.addmm(layer.bias, h, layer.weight_t).relu_()
            mask = None
            if self.dropout > 0:  # as nn.Dropout does it on a CPU: same draws, same scaling
                keep = 1 - self.dropout
                mask = torch.empty_like(h).bernoulli_(keep).div_(keep)
                h.mul_(mask)
            masks.append(mask)
        inputs.append(h)
        last = self.linears[-1]
        logits = torch.addmm(last.bias, h, last.weight_t)

        # Cross-entropy against targets (1 - s)·one-hot + s/K, as F.cross_entropy smooths them;
        # its gradient with respect to the logits is (softmax - target) / batch.
        n, classes = logits.shape
        s = self.smoothing
        log_probs = logits.log_softmax(1)
        loss = log_probs.gather(1, labels[:, None]).mean().neg()
        if s:
            loss = (1 - s) * loss - s * log_probs.mean()
        grad = log_probs.exp_()  # log-probabilities are not needed after the loss
        if s:
            grad.sub_(s / classes)
        grad.scatter_add_(1, labels[:, None], grad.new_full((n, 1), s - 1)).div_(n)

        for index in range(len(self.linears) - 1, -1, -1):
            layer, x = self.linears[index], inputs[index]
            torch.mm(x.t(), grad, out=layer.weight_t.grad)
            torch.sum(grad, 0, out=layer.bias.grad)
            if index == 0:
                break  # the images need no gradient
            grad = grad @ layer.weight_t.t()
            if masks[index - 1] is not None:
                grad.mul_(masks[index - 1])
            grad.masked_fill_(x <= 0, 0)  # ReLU: x is its output (after dropout's mask)
        return loss, logits
