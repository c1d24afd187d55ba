"""Integrated Gradients (Sundararajan et al. 2017), as Wang et al. 2023: target logit, signed.

The path integral from the baseline to the scan is approximated with captum's
quadrature (:func:`captum.attr._utils.approximation_methods.approximation_parameters`,
Gauss-Legendre as captum's :class:`~captum.attr.IntegratedGradients` default),
so the result equals captum's per scan. Unlike captum, which integrates one
scan at a time, the (scan, step) pairs of all scans of a call are packed into
padded passes of ``context.batch`` rows, and each scan's weighted gradients
are summed in step order (deterministic whichever scans share a pass).

Baselines: ``zero`` (Wang et al.) or ``mean``: the template T1w z-scored inside
its brain mask, a population-average brain on the same intensity scale as the
preprocessed scans.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Method, pad_targets, padded_batches
from adheat_app.templates import get_template

#: captum's default quadrature.
QUADRATURE = "gausslegendre"


def mean_baseline(resolution: float, space: str) -> np.ndarray:
    """The template T1w z-scored inside its brain mask (zero outside)."""
    template = get_template(resolution, space)
    data = np.asarray(template.t1w.dataobj, dtype=np.float32)
    mask = template.mask_array()
    values = data[mask]
    return np.where(mask, (data - values.mean()) / values.std(), 0).astype(np.float32)


@METHODS.register("IG")
class IG(Method):
    """Integrated Gradients of the target logit (signed)."""

    name = "IG"
    signed = True

    def parameters(self) -> dict:
        """Steps, baseline, quadrature and output explained."""
        return {"Steps": self.options.ig_steps, "Baseline": self.options.ig_baseline, "Method": QUADRATURE,
                "Output": "logit"}

    def baseline(self, volumes: torch.Tensor) -> torch.Tensor:
        """Baseline image ``(1, 1, X, Y, Z)``."""
        if self.options.ig_baseline == "zero":
            return torch.zeros_like(volumes[:1])
        image = torch.from_numpy(mean_baseline(self.context.resolution, self.context.space))
        return image.to(volumes.device)[None, None]

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str]
                  ) -> torch.Tensor:
        """IG of every scan, (scan, step) pairs packed into padded passes."""
        steps = self.options.ig_steps
        step_sizes, alphas = approximation_parameters(QUADRATURE)
        weights, alphas = step_sizes(steps), alphas(steps)
        base = self.baseline(volumes)
        delta = volumes - base
        total = torch.zeros((len(volumes), 1, *volumes.shape[2:]), dtype=torch.float64, device=volumes.device)
        item_scan = np.repeat(np.arange(len(volumes)), steps)
        item_step = np.tile(np.arange(steps), len(volumes))
        alpha = torch.tensor(alphas, dtype=volumes.dtype, device=volumes.device)

        def build(index: np.ndarray) -> torch.Tensor:
            scale = alpha[item_step[index]].view(-1, 1, 1, 1, 1)
            return base + scale * delta[item_scan[index]]

        for index, rows in padded_batches(len(item_scan), self.context.batch, build):
            rows.requires_grad_(True)
            logits = model(rows)
            chosen = pad_targets(targets[item_scan[index]], self.context.batch)
            grads, = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), rows)
            for row, item in enumerate(index):
                total[item_scan[item]] += weights[item_step[item]] * grads[row].double()
        return (total * delta.double())[:, 0].float()
