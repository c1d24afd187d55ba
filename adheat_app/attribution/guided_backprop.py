"""Guided backpropagation (Springenberg et al. 2015, as compared by Rieke et al. 2018).

captum's :class:`~captum.attr.GuidedBackprop` (negative gradients clamped at
every ``nn.ReLU`` module) of the target class probability; signed.
"""

from __future__ import annotations

import torch
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod, ProbabilityModel


@METHODS.register("GuidedBackprop")
class GuidedBackprop(GradientMethod):
    """Guided backpropagation of ``p_target`` (signed)."""

    name = "GuidedBackprop"
    signed = True

    def parameters(self) -> dict:
        """Output explained (class probability)."""
        return {"Output": "probability"}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """captum GuidedBackprop of the softmax output."""
        return CaptumGuidedBackprop(ProbabilityModel(model)).attribute(rows, target=targets)
