"""The MLP's training step with its gradients written out by hand: no autograd graph per step.

An MLP is a few matrix products. At batch 64 on 2 CPU cores, building and walking autograd's
graph and allocating and zeroing gradients cost about as much as the products themselves;
here the forward keeps what the backward needs, and each gradient is written into a buffer
made once. It is the same maths as autograd on `models.mlp` (tests/test_mlp_step.py holds
the gradients to autograd's), with dropout drawing the same random numbers as nn.Dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainable.models import InputMajorLinear


class MLPStep:
    """Forward, cross-entropy and backward for an MLP built by `models.mlp`, then the
    optimiser's step."""

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, smoothing: float):
        # Each layer's input-major weight and bias, looked up once: nn.Module attribute
        # look-ups cost about 5 us a step.
        linears = [m for m in model if isinstance(m, InputMajorLinear)]
        self.layers = [(m.weight_t, m.bias) for m in linears]
        self.dropout = next((m.p for m in model if isinstance(m, nn.Dropout)), 0.0)
        self.smoothing = smoothing
        self.optimizer = optimizer
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        self._adam_state: dict | None = None  # the optimiser state `_adam_lists` was built from
        self._adam_lists: tuple = ()
        # The -(1 - s) added at each row's true class, a column per batch size.
        self.true_class: dict[int, torch.Tensor] = {}

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on a batch; returns its mean loss and its logits."""
        loss, logits = self.backward(images, labels)
        self.update()
        return loss, logits

    def update(self) -> None:
        """The optimiser's step on the gradients `backward` wrote.

        Fused Adam and AdamW call the fused kernel that `optimizer.step()` ends in, on the
        optimiser's own state and hyperparameters (lr is set every step): the same kernel and
        the same state, without the Python around it (grouping tensors by device, checks),
        about 25 us a step on 2 CPU cores, 2% of a batch-64 step. The first step creates the state
        with Adam's own `_init_group`, as `optimizer.step()` does; `step()` itself would import
        torch._dynamo (`trainable/eager.py`). Every other optimiser goes through `step()`.
        """
        optimizer = self.optimizer
        group = optimizer.param_groups[0]
        direct = isinstance(optimizer, torch.optim.Adam) and group["fused"]
        if not direct or group["amsgrad"] or "decoupled_weight_decay" not in group:
            optimizer.step()
            return
        if not optimizer.state:  # the first step: zero moments and step counts
            optimizer._init_group(group, [], [], [], [], [], [])
        if self._adam_state is not optimizer.state:  # first use, or a checkpoint was loaded
            self._adam_state = optimizer.state
            params = group["params"]
            states = [optimizer.state[p] for p in params]
            self._adam_lists = (
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["step"] for s in states],
            )
        params, grads, exp_avgs, exp_avg_sqs, steps = self._adam_lists
        torch._foreach_add_(steps, 1)
        kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
        beta1, beta2 = group["betas"]
        kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],  # max_exp_avg_sqs: amsgrad only
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )

    @torch.no_grad()
    def backward(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and logits of the batch; every parameter's `.grad` set to the gradient."""
        inputs: list[torch.Tensor] = []  # each layer's input, for its weight gradient
        masks: list[torch.Tensor | None] = []  # dropout's scaled keep-masks, hidden layers only
        h = images.flatten(1)
        for weight, bias in self.layers[:-1]:
            inputs.append(h)
            h = torch.addmm(bias, h, weight).relu_()
            mask = None
            if self.dropout > 0:  # as nn.Dropout does it on a CPU: same draws, same scaling
                keep = 1 - self.dropout
                mask = torch.empty_like(h).bernoulli_(keep).div_(keep)
                h.mul_(mask)
            masks.append(mask)
        inputs.append(h)
        weight, bias = self.layers[-1]
        logits = torch.addmm(bias, h, weight)

        # Cross-entropy against targets (1 - s)·one-hot + s/K, as F.cross_entropy smooths them;
        # its gradient with respect to the logits is (softmax - target) / batch.
        n, classes = logits.shape
        s = self.smoothing
        log_probs = logits.log_softmax(1)
        loss = F.nll_loss(log_probs, labels)
        if s:
            loss = (1 - s) * loss - s * log_probs.mean()
        grad = log_probs.exp_()  # log-probabilities are not needed after the loss
        if s:
            grad.sub_(s / classes)
        if (true_class := self.true_class.get(n)) is None:  # made once per batch size
            true_class = self.true_class[n] = grad.new_full((n, 1), s - 1)
        grad.scatter_add_(1, labels.unsqueeze(1), true_class).div_(n)

        for index in range(len(self.layers) - 1, -1, -1):
            (weight, bias), x = self.layers[index], inputs[index]
            torch.mm(x.t(), grad, out=weight.grad)
            torch.sum(grad, 0, out=bias.grad)
            if index == 0:
                break  # the images need no gradient
            grad = grad @ weight.t()
            if masks[index - 1] is not None:
                grad.mul_(masks[index - 1])
            # ReLU's gradient (x is its output, after dropout's mask): one op, not a compare
            # and a masked fill.
            grad = torch.ops.aten.threshold_backward(grad, x, 0)
        return loss, logits
