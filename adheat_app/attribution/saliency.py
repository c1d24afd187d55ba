"""Sensitivity analysis (Rieke et al. 2018): absolute gradient of the explained output.

captum's :class:`~captum.attr.Saliency` of the ``--explain-output``
(:class:`~.output.OutputModel`; Rieke et al. used the class probability), with
``abs=True``; scans are packed into padded passes (:mod:`.base`).
"""

from __future__ import annotations

import torch
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod
from adheat_app.attribution.output import OutputModel


@METHODS.register("Saliency")
class Saliency(GradientMethod):
    """``|d f / d x|`` of the explained output ``f`` (unsigned)."""

    name = "Saliency"
    signed = False
    order = 4
    sets = ("rieke2018",)
    default_note = "SmoothGrad, its noise-averaged form, ranks above it on every development seed (below)"
    source = "Rieke 2018"
    summary = "sensitivity analysis, \\|∂f / ∂x\\| of the explained output f"

    def parameters(self) -> dict:
        """Output explained and the absolute value."""
        return {"Output": self.output, "Absolute": True}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """captum Saliency of the explained output."""
        return CaptumSaliency(OutputModel(model, self.output)).attribute(rows, target=targets, abs=True)
