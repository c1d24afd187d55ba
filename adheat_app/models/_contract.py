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
- a builder ``build(shape, channels)`` whose model maps volumes
  ``(N, channels, X, Y, Z)`` to logits ``(N, 2)`` (``--input both`` gives two
  channels).

The check builds the model on :data:`CHECK_GRID` (a 4 mm grid: a fraction of a
second for every model here) with one and with two input channels.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

#: Input grid the contract is checked on (the 4 mm MNI152NLin2009cAsym grid).
CHECK_GRID = (49, 58, 49)


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def contract_violations(model: nn.Module, channels: int = 1) -> list[str]:
    """What ``model`` (reading ``channels`` input channels) breaks of the contract; empty when it keeps it."""
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
    try:
        with torch.no_grad():
            out = model.eval()(torch.zeros((1, channels, *CHECK_GRID)))
    except Exception as exc:  # any failure of the forward pass breaks the contract
        problems.append(f"forward fails on volumes (1, {channels}, X, Y, Z) ({type(exc).__name__}: {exc})")
    else:
        if tuple(out.shape) != (1, 2):
            problems.append(f"forward must return logits (N, 2), got {tuple(out.shape)}")
    return problems


def check_model(name: str, build: Callable[..., nn.Module]) -> None:
    """Build model ``name`` on :data:`CHECK_GRID` (1 and 2 channels) and raise when it breaks the contract.

    Raises
    ------
    TypeError
        Naming the model and every rule it breaks.
    """
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(0)
        problems = contract_violations(build(CHECK_GRID))
        try:
            two = build(CHECK_GRID, 2)
        except TypeError as exc:
            problems.append(f"the builder must take the number of input channels ({exc})")
        else:
            problems += [f"with 2 input channels: {p}" for p in contract_violations(two, 2)
                         if p not in problems]
    if problems:
        raise TypeError(f"model {name!r} breaks the model contract (adheat_app/models/_contract.py): "
                        + "; ".join(problems))
