"""Where a layer's units sit in the input: receptive-field centres from the layer geometry.

A unit ``j`` of a convolution or pooling with kernel ``k``, stride ``s``,
padding ``p`` and dilation ``d`` is centred on input position
``j * s - p + d (k - 1) / 2``. Composed from the input up, the units of any
layer of a chain of such layers sit on a regular grid: unit ``j`` of an axis
at input position ``start + j * step`` (voxel index; ``start = 0``,
``step = 1`` at the input). Unpadded convolutions move ``start`` inwards and
pooling spreads ``step``, so the last convolution's units do not span the
input grid evenly: stretching its map over the whole input (as
interpolation to the input size does) misplaces it, by up to 44 mm for
``rieke2018`` at 2 mm.

:func:`unit_grid` traces the model with ``torch.fx`` (every module without
children a leaf) and propagates ``(start, step)`` through the graph:
``Conv3d``, ``MaxPool3d`` and ``AvgPool3d`` modules change it; any other node
whose output keeps the spatial shape of its inputs (BatchNorm, ReLU, residual
sums) keeps it, provided its inputs agree; a node that changes the spatial
shape any other way ends the chain. :func:`interpolation_matrix` gives the
per-axis linear interpolation from such a unit grid to the input voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

GEOMETRIC = (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d)


@dataclass(frozen=True)
class UnitGrid:
    """Input voxel coordinates of a layer's units: ``start[a] + j * step[a]`` for unit ``j`` of axis ``a``."""

    start: tuple[float, float, float]
    step: tuple[float, float, float]

    def centre(self, unit: tuple[int, int, int]) -> tuple[float, float, float]:
        """Input voxel coordinates of one unit's receptive-field centre."""
        return tuple(a + j * h for a, j, h in zip(self.start, unit, self.step))


class _LeafTracer(torch.fx.Tracer):
    """Traces into containers only: every module without children is one graph node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return not list(module.children()) or super().is_leaf_module(module, qualified_name)


def _triple(value) -> tuple[int, int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3


def _through(module: nn.Module, grid: UnitGrid) -> UnitGrid:
    """The grid of a Conv3d's or pool's output units, from that of its input."""
    kernel = _triple(module.kernel_size)
    stride = _triple(module.stride if module.stride is not None else module.kernel_size)
    dilation = _triple(getattr(module, "dilation", 1))
    padding = module.padding
    if isinstance(padding, str):  # 'valid' or 'same' (torch pads 'same' by d(k-1)//2 on the low side)
        padding = [0 if padding == "valid" else d * (k - 1) // 2 for k, d in zip(kernel, dilation)]
    padding = _triple(padding)
    start = tuple(a + (d * (k - 1) / 2 - p) * h
                  for a, k, p, d, h in zip(grid.start, kernel, padding, dilation, grid.step))
    return UnitGrid(start, tuple(h * s for h, s in zip(grid.step, stride)))


def unit_grid(model: nn.Module, layer: nn.Module, example: torch.Tensor) -> UnitGrid:
    """Receptive-field centres of ``layer``'s output units in input voxel coordinates.

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    layer : nn.Module
        A module of ``model`` on the path from the input (called once).
    example : torch.Tensor
        One input ``(1, 1, X, Y, Z)`` (spatial shapes of every node).

    Raises
    ------
    ValueError
        When ``layer`` is not reached by a chain of convolutions, poolings and
        shape-keeping operations from the input.
    """
    graph = _LeafTracer().trace(model)
    module = torch.fx.GraphModule(model, graph)
    with torch.no_grad():
        ShapeProp(module).propagate(example)
    names = {m: name for name, m in model.named_modules()}
    wanted = names.get(layer)
    grids: dict[torch.fx.Node, UnitGrid | None] = {}
    for node in graph.nodes:
        shape = getattr(node.meta.get("tensor_meta"), "shape", None)
        inputs = [arg for arg in node.all_input_nodes if grids.get(arg) is not None]
        if node.op == "placeholder":
            grids[node] = UnitGrid((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        elif node.op == "call_module" and isinstance(model.get_submodule(node.target), GEOMETRIC) and inputs:
            grids[node] = _through(model.get_submodule(node.target), grids[inputs[0]])
        elif (shape is not None and len(shape) == 5 and inputs
              and all(tuple(a.meta["tensor_meta"].shape[2:]) == tuple(shape[2:]) for a in inputs)
              and len({grids[a] for a in inputs}) == 1):
            grids[node] = grids[inputs[0]]
        else:
            grids[node] = None
        if node.op == "call_module" and node.target == wanted:
            if grids[node] is None:
                raise ValueError(f"layer {wanted!r}: its units' input positions cannot be derived (an operation "
                                 "between the input and the layer changes the grid other than by a Conv3d, "
                                 "MaxPool3d or AvgPool3d)")
            return grids[node]
    raise ValueError(f"layer {wanted!r} is not called in the model's forward pass")


def interpolation_matrix(size: int, units: int, start: float, step: float) -> np.ndarray:
    """``(size, units)`` weights of linear interpolation from units at ``start + j * step`` to voxels ``0..size-1``.

    Voxels beyond the outermost unit centres take that unit's value.
    """
    position = np.clip((np.arange(size) - start) / step, 0, units - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, units - 1)
    weight = position - low
    matrix = np.zeros((size, units))
    np.add.at(matrix, (np.arange(size), low), 1 - weight)
    np.add.at(matrix, (np.arange(size), high), weight)
    return matrix
