"""Guided backpropagation (Springenberg et al. 2015, as compared by Rieke et al. 2018).

captum's :class:`~captum.attr.GuidedBackprop` (negative gradients clamped at
every ``nn.ReLU`` module) of the ``--explain-output``
(:class:`~.output.OutputModel`; Rieke et al. used the class probability); signed.
"""

from __future__ import annotations

import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod
from adheat_app.attribution.output import OutputModel


@METHODS.register("GuidedBackprop")
class GuidedBackprop(GradientMethod):
    """Guided backpropagation of the explained output (signed)."""

    name = "GuidedBackprop"
    signed = True
    order = 5
    sets = ("rieke2018",)
    source = "Rieke 2018"
    summary = "guided backpropagation of the explained output"
    default_note = "class-insensitive (below)"

    def parameters(self) -> dict:
        """Output explained."""
        return {"Output": self.output}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """captum GuidedBackprop of the explained output."""
        return CaptumGuidedBackprop(OutputModel(model, self.output)).attribute(rows, target=targets)
