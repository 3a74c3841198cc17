"""Keep torch._dynamo, the compiler's front end, out of trial processes that never compile.

torch.optim marks `Optimizer.add_param_group`, `state_dict`, `load_state_dict` and `zero_grad`
"not to be compiled" with `torch._disable_dynamo`, which imports torch._dynamo the first time
each is called, compiled or not. That import costs every process that builds an optimiser
start-up time and memory it never uses (figures: benchmarks/README.md). Nothing in this
project calls torch.compile (it was measured slower here: see the README's Performance
section), so the marks have nothing to guard.

The wrapper keeps the function it disables in an attribute of the wrapped function once built
(`torch/_compile.py`); setting that attribute to the function itself makes the wrapper call it
directly. Should a later torch stop looking there, it imports torch._dynamo as before: slower,
never wrong.
"""

from __future__ import annotations

import torch

MARKED = ("add_param_group", "state_dict", "load_state_dict", "zero_grad")


def skip_compiler_marks() -> None:
    """Let torch.optim's `_disable_dynamo` marks call their functions without importing
    torch._dynamo. Idempotent; leaves a mark alone that has already been built."""
    for name in MARKED:
        function = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if function is not None and not hasattr(function, "__dynamo_disable"):
            setattr(function, "__dynamo_disable", function)
