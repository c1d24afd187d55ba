"""Guided Grad-CAM (Selvaraju et al. 2017) on the last convolution, as Wang et al. 2023.

captum's :class:`~captum.attr.GuidedGradCam` on ``model.last_conv`` for the
target *logit*: Grad-CAM of that layer (channel weights = spatially averaged
gradients, ReLU of the weighted sum) upsampled trilinearly to the input grid,
times guided backpropagation. Signed (guided backpropagation can be negative).
:meth:`~.base.GradientMethod.prepare` folds every BatchNorm except the one
after ``last_conv``, so that Grad-CAM reads that convolution's own output.
"""

from __future__ import annotations

import torch
from captum.attr import GuidedGradCam
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod
from adheat_app.attribution.output import OutputModel


@METHODS.register("GGC")
class GGC(GradientMethod):
    """Guided Grad-CAM of the target logit on ``model.last_conv`` (signed)."""

    name = "GGC"
    signed = True
    unfolded_layer = "last_conv"

    def parameters(self) -> dict:
        """Layer, upsampling and output explained."""
        return {"Layer": "last_conv", "Upsampling": "trilinear", "Output": self.output}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """captum GuidedGradCam with trilinear upsampling."""
        return GuidedGradCam(OutputModel(model, self.output), model.last_conv).attribute(rows, target=targets, interpolate_mode="trilinear")
