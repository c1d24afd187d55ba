"""Guided Grad-CAM (Selvaraju et al. 2017) on the last convolution, as Wang et al. 2023.

Grad-CAM of the ``--explain-output`` (:mod:`.output`) on ``model.last_conv``,
read after the BatchNorm that follows it (the layer's normalised output, as
the rest of the network sees it; reading the convolution's raw output would
shift every channel by a constant before the CAM's ReLU): channel weights =
spatially averaged gradients, CAM = ReLU of the weighted channel sum. The CAM
is then placed on the input grid by the layer geometry: each unit at its
receptive-field centre in input voxel coordinates (:mod:`.receptive`), linear
interpolation between the centres (voxels beyond the outermost centres take
the border unit's value). Stretching the CAM over the whole input instead
(captum's :class:`~captum.attr.GuidedGradCam` upsampling) misplaced it by up
to 44 mm for ``rieke2018`` and 56 mm for ``wang2023`` at 2 mm. Guided Grad-CAM
= that CAM times guided backpropagation (captum's
:class:`~captum.attr.GuidedBackprop`) of the same output. Signed.

A map is zero everywhere when the CAM's weighted sum is negative at every unit
(the ReLU removes it all); the runner counts such maps. Read before the
BatchNorm, the sum is shifted by a constant per scan, which made it negative
everywhere for some scans (docs/heatmaps.md).

:meth:`GGC.prepare` folds every BatchNorm into its convolution
(:meth:`~.base.GradientMethod.prepare`), so the folded ``last_conv`` itself
outputs the normalised values; an unfolded model is read at the BatchNorm
fed by ``last_conv``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod
from adheat_app.attribution.canonize import feeding_convs
from adheat_app.attribution.output import OutputModel
from adheat_app.attribution.receptive import UnitGrid, interpolation_matrix, unit_grid


def cam_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The module Grad-CAM reads: the BatchNorm3d fed by ``model.last_conv``, or ``last_conv`` itself."""
    names = {module: name for name, module in model.named_modules()}
    if not any(isinstance(module, nn.BatchNorm3d) for module in names):  # folded: the conv outputs the BatchNorm's
        return model.last_conv
    conv = names[model.last_conv]
    fed = [bn for bn, source in feeding_convs(model, example).items() if source == conv]
    return model.get_submodule(fed[0]) if fed else model.last_conv


class GradCamModel(nn.Module):
    """A classifier with the layer Grad-CAM reads and that layer's unit grid (made once per fold model).

    Parameters
    ----------
    model : nn.Module
        Classifier in eval mode.
    example : torch.Tensor
        One scan ``(1, 1, X, Y, Z)`` (to find the layer and trace its geometry).
    """

    def __init__(self, model: nn.Module, example: torch.Tensor):
        super().__init__()
        self.model = model
        self.layer = cam_layer(model, example)
        self.grid: UnitGrid = unit_grid(model, self.layer, example)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of volumes ``x``."""
        return self.model(x)


def grad_cam(model: GradCamModel, rows: torch.Tensor, targets: torch.Tensor, output: str) -> torch.Tensor:
    """Grad-CAM of ``rows`` on the input grid, ``(B, X, Y, Z)``, units placed at their receptive-field centres."""
    captured: list[torch.Tensor] = []
    handle = model.layer.register_forward_hook(lambda module, inputs, out: captured.append(out))
    try:
        explained = OutputModel(model.model, output)(rows)
    finally:
        handle.remove()
    activation = captured[0]
    grads, = torch.autograd.grad(explained.gather(1, targets[:, None]).sum(), activation)
    cam = F.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * activation).sum(1)).detach()
    for axis, (size, units) in enumerate(zip(rows.shape[2:], cam.shape[1:])):
        matrix = interpolation_matrix(size, units, model.grid.start[axis], model.grid.step[axis])
        weights = torch.from_numpy(matrix.astype(np.float32)).to(cam.device)
        cam = torch.tensordot(cam, weights, dims=([1], [1]))  # the axis moves last, resized
    return cam


@METHODS.register("GGC")
class GGC(GradientMethod):
    """Guided Grad-CAM of the explained output on ``model.last_conv`` after its BatchNorm (signed)."""

    name = "GGC"
    signed = True
    all_zero_reason = ": Grad-CAM's weighted channel sum was negative at every unit of the layer"
    order = 3
    sets = ("wang2023",)
    source = "Wang 2023"
    summary = ("Guided Grad-CAM of the explained output on the last conv layer, read after its BatchNorm; each CAM "
               "unit placed at its receptive-field centre in the input and interpolated linearly between centres; "
               "times guided backpropagation; signed")
    default_note = "class-insensitive (below)"

    def parameters(self) -> dict:
        """Layer, placement on the input grid and output explained."""
        return {"Layer": "last_conv after its BatchNorm",
                "Upsampling": "linear from the units' receptive-field centres", "Output": self.output}

    def prepare(self, model: nn.Module, example: torch.Tensor) -> GradCamModel:
        """The folded, fast-input-gradient model (:class:`~.base.GradientMethod`) with its CAM layer and grid."""
        return GradCamModel(super().prepare(model, example), example)

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Grad-CAM placed on the input grid times guided backpropagation."""
        if not isinstance(model, GradCamModel):
            model = GradCamModel(model, rows[:1].detach())
        cam = grad_cam(model, rows, targets, self.output)
        guided = GuidedBackprop(OutputModel(model.model, self.output)).attribute(rows, target=targets)
        return guided * cam[:, None]
