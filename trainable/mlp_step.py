"""The MLP's training step with its gradients written out by hand: no autograd graph per step.

An MLP is a few matrix products. At batch 64 on 2 CPU cores, building and walking autograd's
graph and allocating and zeroing gradients cost about as much as the products themselves;
here the forward keeps what the backward needs, and each gradient is written into a buffer
made once. It is the same maths as autograd on `mlp.mlp` (tests/test_mlp_step.py holds
the gradients to autograd's), with dropout drawing the same random numbers as nn.Dropout.
It steps only a network that is exactly that sequence (`MLPStep.fits`); any other trains
through autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.adam import adam

from trainable.augment import Mix
from trainable.mlp import InputMajorLinear


class MLPStep:
    """Forward, cross-entropy and backward for an MLP built by `mlp.mlp`, then the
    optimiser's step."""

    @staticmethod
    def fits(model: nn.Module) -> bool:
        """Whether `model` is exactly what this step computes: Flatten, then hidden layers of
        InputMajorLinear → ReLU (→ Dropout, one rate for all), then an InputMajorLinear. Exact
        types: a subclass may compute something else."""
        layers = list(model) if type(model) is nn.Sequential else []
        if not layers or type(layers[0]) is not nn.Flatten or layers[0].start_dim != 1:
            return False
        rates, index = [], 1  # each hidden layer's dropout rate, 0 for none: one for all
        while index < len(layers) and type(layers[index]) is InputMajorLinear:
            index += 1
            if index == len(layers):
                return len(set(rates)) <= 1
            if type(layers[index]) is not nn.ReLU:
                return False
            index += 1
            dropout = index < len(layers) and type(layers[index]) is nn.Dropout
            rates.append(layers[index].p if dropout else 0.0)
            index += dropout
        return False

    def __init__(self, model: nn.Sequential, optimizer: torch.optim.Optimizer, smoothing: float):
        # Each layer's input-major weight and bias, looked up once here, not through
        # nn.Module's slow attribute look-ups every step.
        linears = [m for m in model if isinstance(m, InputMajorLinear)]
        self.layers = [(m.weight_t, m.bias) for m in linears]
        self.dropout = next((m.p for m in model if isinstance(m, nn.Dropout)), 0.0)
        self.smoothing = smoothing
        self.optimizer = optimizer
        for param in model.parameters():
            param.grad = torch.zeros_like(param)
        # The -(1 - s) added at each row's true class, a column per batch size.
        self.true_class: dict[int, torch.Tensor] = {}

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step on a batch; returns its mean loss and its logits."""
        loss, logits = self.backward(images, labels, mix)
        self.update()
        return loss, logits

    def update(self) -> None:
        """The optimiser's step on the gradients `backward` wrote.

        Adam and AdamW go through torch.optim's functional `adam` on the optimiser's own state
        and hyperparameters (lr is set every step): the same fused kernel and state as
        `optimizer.step()`, which would import torch._dynamo (`trainable/eager.py`); the first
        step creates the state with Adam's own `_init_group`, as `step()` does. Every other
        optimiser goes through `step()`.
        """
        optimizer = self.optimizer
        group = optimizer.param_groups[0]
        if not isinstance(optimizer, torch.optim.Adam) or group["amsgrad"]:
            optimizer.step()
            return
        if not optimizer.state:  # the first step: zero moments and step counts
            optimizer._init_group(group, [], [], [], [], [], [])
        params = group["params"]
        states = [optimizer.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adam(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],  # max_exp_avg_sqs: amsgrad only
            [s["step"] for s in states],
            foreach=group["foreach"],
            fused=group["fused"],
            decoupled_weight_decay=group["decoupled_weight_decay"],
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
        self, images: torch.Tensor, labels: torch.Tensor, mix: Mix | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and logits of the batch (for a mixed batch, its two labels' losses
        weighted as `mix` says); every parameter's `.grad` set to the gradient."""
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
        if mix is not None:  # the target is λ of the own label's and 1 - λ of the partner's
            loss = torch.lerp(loss, F.nll_loss(log_probs, mix.partner), 1 - mix.weight)
        if s:
            loss = (1 - s) * loss - s * log_probs.mean()
        grad = log_probs.exp_()  # log-probabilities are not needed after the loss
        if s:
            grad.sub_(s / classes)
        if mix is not None:
            own = grad.new_full((n, 1), (s - 1) * mix.weight)
            partner = grad.new_full((n, 1), (s - 1) * (1 - mix.weight))
            grad.scatter_add_(1, labels.unsqueeze(1), own)
            grad.scatter_add_(1, mix.partner.unsqueeze(1), partner)
        else:
            if (true_class := self.true_class.get(n)) is None:  # made once per batch size
                true_class = self.true_class[n] = grad.new_full((n, 1), s - 1)
            grad.scatter_add_(1, labels.unsqueeze(1), true_class)
        grad.div_(n)

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
