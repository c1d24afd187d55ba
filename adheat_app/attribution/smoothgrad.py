"""SmoothGrad (Smilkov et al. 2017): the gradient of the explained output, averaged over noisy copies of the scan.

``map = 1/n sum_k d f / d x (x + eps_k)``, ``eps_k ~ N(0, sigma^2)`` drawn
independently per voxel, ``n = --smoothgrad-samples``, where ``f`` is the
``--explain-output`` (:mod:`.output`). The noise level is relative, as Smilkov et
al. define it: ``sigma = --smoothgrad-noise * (max - min)`` of the scan, per
input channel (an intensity channel and a log-Jacobian channel span different
ranges). The mean gradient is signed (Smilkov et al. average the raw
gradients; their figures show its absolute value).

Every (scan, sample) pair is one row; rows of all scans are packed into padded
passes of ``context.batch`` rows (:func:`~.base.padded_batches`), on the model
prepared as the other gradient methods run it (BatchNorm folded, the CPU's fast
input gradient: :meth:`~.base.GradientMethod.prepare`). Each scan draws its
noise from its own generator, seeded from the run seed and the scan key
(:func:`~.base.scan_seed`), one sample after the other with
``torch.randn((C, X, Y, Z))``, and its gradients are summed in sample order: a
scan's map is the same whichever scans share its passes, and equals captum's
:class:`~captum.attr.NoiseTunnel` (``smoothgrad``, ``nt_samples_batch_size``
1) of the gradient with the global generator seeded the same (tested).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import GradientMethod, pad_targets, padded_batches, per_channel, scan_seed
from adheat_app.attribution.output import explained


def noise_scale(volumes: torch.Tensor, level: float) -> torch.Tensor:
    """``sigma`` per scan and channel, ``(N, C, 1, 1, 1)``: ``level`` times each channel's range of values."""
    flat = volumes.flatten(2)
    spread = flat.amax(dim=2) - flat.amin(dim=2)
    return (level * spread)[:, :, None, None, None]


@METHODS.register("SmoothGrad")
class SmoothGrad(GradientMethod):
    """Mean gradient of the explained output over noisy copies of the scan (signed)."""

    name = "SmoothGrad"
    signed = True
    uses = ("smoothgrad_samples", "smoothgrad_noise")
    order = 9
    default = True
    source = "Smilkov 2017"
    summary = ("gradient of the explained output averaged over `--smoothgrad-samples` copies of the scan with "
               "Gaussian noise of `--smoothgrad-noise` × each channel's range; signed")

    def parameters(self) -> dict:
        """Samples, relative noise level, output explained and how the noise is drawn."""
        return {"Samples": self.options.smoothgrad_samples, "NoiseLevel": self.options.smoothgrad_noise,
                "NoiseScale": "noise level x (max - min) of each channel of the scan", "Output": self.output,
                "Noise": "per scan from its own generator (run seed, scan key)"}

    def explain(self, model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Gradient of the explained output of one padded pass of noisy rows."""
        rows.requires_grad_(True)
        grad, = torch.autograd.grad(explained(model(rows), targets, self.output).sum(), rows)
        return grad

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """SmoothGrad of every scan, (scan, sample) rows packed into padded passes."""
        samples = self.options.smoothgrad_samples
        sigma = noise_scale(volumes, self.options.smoothgrad_noise)
        generators = [torch.Generator().manual_seed(scan_seed(self.context.seed, key)) for key in keys]
        item_scan = np.repeat(np.arange(len(volumes)), samples)
        total = torch.zeros(volumes.shape, device=volumes.device)

        def build(index: np.ndarray) -> torch.Tensor:
            rows = volumes[item_scan[index]].clone()
            for row, scan in enumerate(item_scan[index]):
                noise = torch.randn(volumes.shape[1:], generator=generators[scan])
                rows[row] += noise.to(volumes.device) * sigma[scan]
            return rows

        for index, rows in padded_batches(len(item_scan), self.context.batch, build):
            grads = self.explain(model, rows, pad_targets(targets[item_scan[index]], self.context.batch))
            for row, scan in enumerate(item_scan[index]):
                total[scan] += grads[row]
        return per_channel(total / samples)
