"""Control maps: a heatmap method run unchanged on a control model, written as ``desc-<Method><Suffix>``.

A control model is one that learned nothing about the diagnosis: the trained
model with every learned layer re-initialised (:mod:`.sanity`,
``<Method>Random``), or a model trained on permuted labels
(:mod:`.data_randomisation`, ``<Method>PermutedLabels``). The group evaluation
scores control maps exactly like the method's own, so a method's overlap with a
reference can be compared with what the same method finds in such a model
(Adebayo et al. 2018).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import torch
from torch import nn

from adheat_app.attribution.base import Attribution, Method
from adheat_app.layout import MapName


class ControlMethod(Method):
    """A method's maps of a control model (subclasses: the suffix, the model, the recorded parameters).

    Parameters
    ----------
    method : Method
        The heatmap method of the trained model, run unchanged.
    """

    #: Appended to the method's name (the maps' ``desc``).
    suffix: ClassVar[str]

    def __init__(self, method: Method):
        super().__init__(method.options, method.context)
        self.method = method
        self.name = MapName(method.name, self.suffix).desc
        self.signed = method.signed
        self.all_zero_reason = method.all_zero_reason

    @property
    def needs_template(self) -> bool:
        """As the wrapped method."""
        return self.method.needs_template

    @property
    def output(self) -> str:
        """As the wrapped method."""
        return self.method.output

    @abstractmethod
    def control(self) -> dict:
        """What makes the model a control (recorded in the sidecars next to the method's parameters)."""

    def parameters(self) -> dict:
        """The wrapped method's parameters and :meth:`control`."""
        return {**self.method.parameters(), **self.control()}

    def control_model(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The control model made from the model it is given (default: that model, already a control)."""
        return model

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The control model, prepared by the wrapped method."""
        return self.method.prepare(self.control_model(model, example), example)

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped method's maps of the control model."""
        return self.method.attribute(model, volumes, targets, keys, template)

    def attribution(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                    template: torch.Tensor | None = None) -> Attribution:
        """The wrapped method's maps of the control model and its per-scan values."""
        return self.method.attribution(model, volumes, targets, keys, template)
