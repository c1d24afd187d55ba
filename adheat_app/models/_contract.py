"""The contract every registered model keeps, checked when it registers (:func:`check_model`).

The heatmap methods take models apart, so a model must be built so they can:

- ``last_conv``: a property (not a second registration) returning the last
  ``nn.Conv3d`` in module order, the target layer of Guided Grad-CAM;
- ``torch.flatten`` in ``forward``, no ``nn.Flatten`` module (the receptive-field
  tracer and Grad-CAM split the model at the flattening);
- one ``nn.ReLU`` module per activation, none in place (guided backpropagation
  hooks each ReLU module; a shared or in-place one would be hooked twice or
  overwrite the tensor the hook reads);
- every ``nn.BatchNorm3d`` right after the ``nn.Conv3d`` it normalises, in
  module order, with matching channels (the gradient methods and LRP fold it
  into that convolution);
- a ``forward`` that ``torch.fx`` can trace (LRP splits additions and the
  receptive-field tracer walks the traced graph);
- logits ``(N, 2)`` for volumes ``(N, 1, X, Y, Z)``.

The check builds the model on :data:`CHECK_GRID` (a 4 mm grid: a fraction of a
second for every model here).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Input grid the contract is checked on (the 4 mm MNI152NLin2009cAsym grid).
CHECK_GRID = (49, 58, 49)


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def contract_violations(model: nn.Module) -> list[str]:
    """What ``model`` breaks of the contract (see the module docstring); empty when it keeps it."""
    problems = []
    modules = list(model.modules())
    convs = [m for m in modules if isinstance(m, nn.Conv3d)]
    if not isinstance(inspect.getattr_static(type(model), "last_conv", None), property):
        problems.append("last_conv must be a property returning the last nn.Conv3d")
    elif not convs or model.last_conv is not convs[-1]:
        problems.append("last_conv is not the last nn.Conv3d in module order")
    if any(isinstance(m, nn.Flatten) for m in modules):
        problems.append("flatten with torch.flatten in forward, not an nn.Flatten module")
    elif "torch.flatten(" not in inspect.getsource(type(model).forward):
        problems.append("forward must flatten with torch.flatten")
    relus = [m for m in modules if isinstance(m, nn.ReLU)]
    if not relus or any(m.inplace for m in relus):
        problems.append("activations must be nn.ReLU modules, none with inplace=True")
    leaves = _leaves(model)
    for i, m in enumerate(leaves):
        if isinstance(m, nn.BatchNorm3d) and not (i and isinstance(leaves[i - 1], nn.Conv3d)
                                                   and leaves[i - 1].out_channels == m.num_features):
            problems.append("every nn.BatchNorm3d must come right after the nn.Conv3d it normalises")
            break
    try:
        calls = [node.target for node in torch.fx.symbolic_trace(model).graph.nodes if node.op == "call_module"]
    except Exception as exc:  # any tracing failure breaks the contract
        problems.append(f"torch.fx cannot trace forward ({type(exc).__name__}: {exc})")
    else:
        shared = sorted({c for c in calls if calls.count(c) > 1 and isinstance(model.get_submodule(c), nn.ReLU)})
        if shared:
            problems.append(f"one nn.ReLU module per activation: {', '.join(shared)} is called more than once")
    with torch.no_grad():
        out = model.eval()(torch.zeros((1, 1, *CHECK_GRID)))
    if tuple(out.shape) != (1, 2):
        problems.append(f"forward must return logits (N, 2), got {tuple(out.shape)}")
    return problems


def check_model(name: str, build: Callable[[Sequence[int]], nn.Module]) -> None:
    """Build model ``name`` on :data:`CHECK_GRID` and raise when it breaks the contract.

    Raises
    ------
    TypeError
        Naming the model and every rule it breaks.
    """
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        problems = contract_violations(build(CHECK_GRID))
    if problems:
        raise TypeError(f"model {name!r} breaks the model contract (adheat_app/models/_contract.py): "
                        + "; ".join(problems))
