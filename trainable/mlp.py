"""The MLP family: the original experiment's network, deeper and with dropout as options."""

from __future__ import annotations

import torch
from torch import nn


class InputMajorLinear(nn.Module):
    """nn.Linear with its weight held transposed, in_features × out_features.

    The same maths and initialisation as nn.Linear (outputs differ by float rounding only),
    but both big products of a training step take contiguous row-major operands: the forward
    x @ weight_t and the weight gradient x.T @ grad_out. On this project's 2-core VM, MKL runs
    nn.Linear's form of that gradient (grad_out.T @ x, 128 × 3072 at batch 64) at half speed
    for tens of seconds at a time, and this form never. The state dict holds `weight` as
    nn.Linear does (out × in): checkpoints and exported models load into a plain nn.Linear,
    and the original experiment's weights load into this.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        reference = nn.Linear(in_features, out_features)  # nn.Linear's initialisation exactly
        self.weight_t = nn.Parameter(reference.weight.detach().t().contiguous())
        self.bias = nn.Parameter(reference.bias.detach())
        self.register_state_dict_post_hook(_weight_as_nn_linear)
        self.register_load_state_dict_pre_hook(_weight_from_nn_linear)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as nn.Linear holds it (out × in): a view, so writes reach `weight_t`."""
        return self.weight_t.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear multiplies by weight.t(), which is weight_t itself: the row-major operand.
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _weight_as_nn_linear(module, state_dict, prefix, local_metadata) -> None:
    # Re-inserted in nn.Linear's order (weight, bias): a leaf's entries are the last ones here.
    weight, bias = state_dict.pop(prefix + "weight_t").t(), state_dict.pop(prefix + "bias")
    state_dict[prefix + "weight"], state_dict[prefix + "bias"] = weight, bias


def _weight_from_nn_linear(module, state_dict, prefix, *args) -> None:
    if prefix + "weight" in state_dict:
        state_dict[prefix + "weight_t"] = state_dict.pop(prefix + "weight").t()


def mlp(
    input_shape: tuple[int, ...], num_classes: int, hidden: int, depth: int = 1, dropout: float = 0
) -> nn.Sequential:
    """`depth` hidden ReLU layers of `hidden` units; depth 1 without dropout is the original
    experiment's network exactly (same maths, same initialisation, same state dict)."""
    channels, height, width = input_shape
    layers: list[nn.Module] = [nn.Flatten()]
    features = channels * height * width
    for _ in range(depth):
        layers += [InputMajorLinear(features, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = hidden
    layers.append(InputMajorLinear(features, num_classes))
    return nn.Sequential(*layers)
