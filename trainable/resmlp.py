"""The residual MLP family: pre-norm inverted-bottleneck blocks on the flattened image.

After Bachmann et al. 2023 ("Scaling MLPs"): a linear embedding of the whole image, then
`depth` blocks of x + W₂·σ(W₁·LayerNorm(x)), W₁ widening by `expansion`, a final LayerNorm and
a linear head. Not Touvron et al.'s ResMLP, which mixes patches; this one sees every pixel in
every unit, as the original MLP does.
"""

from __future__ import annotations

from torch import nn

from trainable.mlp import InputMajorLinear


class Block(nn.Module):
    """x + project(GELU(expand(LayerNorm(x)))): the branch learns a correction to x."""

    def __init__(self, width: int, expansion: int, dropout: float) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width * expansion),
            nn.GELU(),
            nn.Linear(width * expansion, width),
        )
        if dropout > 0:
            self.branch.append(nn.Dropout(dropout))

    def forward(self, x):
        return x + self.branch(x)


def resmlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: int,
    depth: int = 1,
    expansion: int = 4,
    dropout: float = 0,
) -> nn.Sequential:
    """A `hidden`-wide embedding of the flattened image, `depth` residual blocks widening to
    `expansion`·`hidden` inside, LayerNorm, and a linear head."""
    features = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(
        nn.Flatten(),
        # The embedding holds its weight input-major, as the MLP's layers do (mlp.py says
        # why): its weight gradient, the widest product of a step, runs at full speed.
        InputMajorLinear(features, hidden),
        *(Block(hidden, expansion, dropout) for _ in range(depth)),
        nn.LayerNorm(hidden),
        nn.Linear(hidden, num_classes),
    )
