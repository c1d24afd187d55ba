"""Sensitivity analysis (Rieke et al. 2018): absolute gradient of the target class probability.

captum's :class:`~captum.attr.Saliency` on the softmax output, with
``abs=True``; scans are packed into padded passes (:mod:`.base`).
"""

from __future__ import annotations

import torch
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod, ProbabilityModel


@METHODS.register("Saliency")
class Saliency(GradientMethod):
    """``|d p_target / d x|`` (unsigned)."""

    name = "Saliency"
    signed = False

    def parameters(self) -> dict:
        """Output explained (class probability) and the absolute value."""
        return {"Output": "probability", "Absolute": True}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """captum Saliency of the softmax output."""
        return CaptumSaliency(ProbabilityModel(model)).attribute(rows, target=targets, abs=True)
