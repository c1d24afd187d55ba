"""Integrated Gradients (Sundararajan et al. 2017), as Wang et al. 2023, of the explained output; signed.

The integrand is the gradient of the ``--explain-output`` (:mod:`.output`:
by default the logit difference; Wang et al. integrated the target logit).

The path integral from the baseline to the scan is approximated with captum's
quadrature (:func:`captum.attr._utils.approximation_methods.approximation_parameters`,
Gauss-Legendre as captum's :class:`~captum.attr.IntegratedGradients` default),
so the result equals captum's per scan. Unlike captum, which integrates one
scan at a time, the (scan, step) pairs of up to ``context.batch`` scans are
packed into padded passes of ``context.batch`` rows, and each scan's weighted
gradients are summed in step order (deterministic whichever scans share a
pass).

The input convolution is affine, so the path is integrated at its output
(:func:`~adheat_app.attribution.canonize.split_input_layer`): each step
starts from ``layer(baseline) + a * W*(x - baseline)``, the weighted
gradients at the layer's output are summed, and the sum is mapped back to the
input by one transposed convolution per scan, which saves the input
convolution's forward and backward at every step. The split is made once per
fold model (:meth:`IG.prepare`), on the CPU only, where that convolution is
expensive (``docs/performance.md``). Models whose input is
used past their first convolution, and models passed without preparing, are
integrated through the whole model.

Baselines (``--ig-baseline``, :mod:`.references`): ``zero`` (Wang et al.'s
choice, here a flat brain at the subject's mean intensity), ``template`` (the
mean image of the fold's training scans) or ``blurred`` (the scan smoothed).

Completeness: the attributions of a scan sum to ``f(x) - f(baseline)`` up to
the quadrature error. That error, ``|sum - (f(x) - f(baseline))|``, is
recorded per scan (:meth:`IG.attribution`: ``IGConvergenceDelta`` and its
ratio to ``|f(x) - f(baseline)|``); above :data:`DELTA_WARNING` of it a
warning suggests more ``--ig-steps``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr._utils.approximation_methods import approximation_parameters
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Attribution, Method, class_logits, pad_targets, padded_batches, per_channel
from adheat_app.attribution.canonize import InputSplit, split_on_cpu
from adheat_app.attribution.output import explained
from adheat_app.attribution.references import BLUR_FWHM_MM, blurred

#: captum's default quadrature.
QUADRATURE = "gausslegendre"
#: Completeness error, relative to ``|f(x) - f(baseline)|``, above which a scan is warned about.
DELTA_WARNING = 0.05

LOGGER = logging.getLogger(__name__)


@METHODS.register("IG")
class IG(Method):
    """Integrated Gradients of the explained output (signed)."""

    name = "IG"
    signed = True
    uses = ("ig_steps", "ig_baseline")
    order = 1
    default = True
    sets = ("wang2023",)
    source = "Wang 2023"
    summary = "Integrated Gradients of the explained output from `--ig-baseline`, `--ig-steps`; signed"

    def parameters(self) -> dict:
        """Steps, baseline, quadrature and output explained."""
        params = {"Steps": self.options.ig_steps, "Baseline": self.options.ig_baseline, "Method": QUADRATURE,
                  "Output": self.output}
        if self.options.ig_baseline == "blurred":
            params["BlurFWHMmm"] = BLUR_FWHM_MM
        return params

    @property
    def needs_template(self) -> bool:
        """Whether the baseline is the fold's training mean."""
        return self.options.ig_baseline == "template"

    def baseline(self, volumes: torch.Tensor, template: torch.Tensor | None) -> torch.Tensor:
        """Baseline images: ``(1, C, X, Y, Z)`` shared (zero, template) or ``(N, C, X, Y, Z)`` (blurred)."""
        if self.options.ig_baseline == "zero":
            return torch.zeros_like(volumes[:1])
        if self.options.ig_baseline == "blurred":
            return blurred(volumes, self.context.resolution)
        if template is None:
            raise ValueError("--ig-baseline template needs the fold's training mean image")
        return template.to(volumes.device).reshape(1, *volumes.shape[1:])

    def prepare(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        """The model split at its input convolution, on the CPU where it can be (see the module docstring)."""
        return split_on_cpu(model, example)

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """IG of every scan, ``context.batch`` scans at a time (:meth:`attribution` without the diagnostics)."""
        return self.attribution(model, volumes, targets, keys, template).maps

    def attribution(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                    template: torch.Tensor | None = None) -> Attribution:
        """IG of every scan, ``context.batch`` scans at a time, and the completeness error of each scan."""
        base = self.baseline(volumes, template)
        layer, rest = (model.layer, model.rest) if isinstance(model, InputSplit) else (None, model)
        out = torch.empty(volumes.shape, device=volumes.device)
        for start in range(0, len(volumes), self.context.batch):
            part = slice(start, start + self.context.batch)
            out[part] = self._integrate(layer, rest, base[part] if len(base) > 1 else base, volumes[part],
                                        targets[part])
        completeness = self._completeness(model, volumes, base.expand_as(volumes), targets, keys, out)
        return Attribution(per_channel(out), completeness)

    def _completeness(self, model: nn.Module, volumes: torch.Tensor, base: torch.Tensor, targets: torch.Tensor,
                      keys: list[str], maps: torch.Tensor) -> dict[str, dict]:
        """``IGConvergenceDelta`` per scan key: ``|sum of the map - (f(x) - f(baseline))|``, warned above 5 %."""
        change = (explained(class_logits(model, volumes, self.context, amp=False), targets, self.output)
                  - explained(class_logits(model, base, self.context, amp=False), targets, self.output))
        delta = (maps.flatten(1).double().sum(1) - change.double()).abs()
        found = {}
        for key, d, c in zip(keys, delta.tolist(), change.abs().tolist()):
            relative = d / c if c > 0 else float("inf") if d > 0 else 0.0
            found[key] = {"IGConvergenceDelta": d, "IGConvergenceDeltaRelative": relative}
            if relative > DELTA_WARNING:
                LOGGER.warning("IG %s: the map sums to f(x) - f(baseline) only within %.1f %% (delta %.3g); "
                               "raise --ig-steps", key, 100 * relative, d)
        return found

    def _integrate(self, layer: nn.Conv3d | None, rest: nn.Module, base: torch.Tensor, volumes: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor:
        """IG of a few scans (``base``: one shared baseline or one per scan): the path integral at the input
        layer's output, then mapped back to the input."""
        steps = self.options.ig_steps
        step_sizes, alphas = approximation_parameters(QUADRATURE)
        weights, alphas = step_sizes(steps), alphas(steps)
        delta = volumes - base
        if layer is None:
            start, direction = base, delta
        else:
            with torch.no_grad():  # one scan per call: a convolution's result depends on the batch size
                start = torch.cat([layer(b[None].contiguous(memory_format=torch.channels_last_3d)) for b in base])
                direction = torch.cat([F.conv3d(d[None], layer.weight, None, layer.stride, layer.padding,
                                                layer.dilation, layer.groups) for d in delta])
        start = start.contiguous(memory_format=torch.channels_last_3d)
        direction = direction.contiguous(memory_format=torch.channels_last_3d)
        total = torch.zeros_like(direction)
        item_scan = np.repeat(np.arange(len(volumes)), steps)
        item_step = np.tile(np.arange(steps), len(volumes))

        def build(index: np.ndarray) -> torch.Tensor:
            rows = torch.empty((len(index), *direction.shape[1:]), device=direction.device,
                               memory_format=torch.channels_last_3d)
            for row, item in enumerate(index):
                scan = item_scan[item]
                torch.add(start[scan if len(start) > 1 else 0], direction[scan], alpha=float(alphas[item_step[item]]),
                          out=rows[row])
            return rows

        for index, rows in padded_batches(len(item_scan), self.context.batch, build):
            rows.requires_grad_(True)
            logits = rest(rows)
            chosen = pad_targets(targets[item_scan[index]], self.context.batch)
            grads, = torch.autograd.grad(explained(logits, chosen, self.output).sum(), rows)
            for row, item in enumerate(index):
                total[item_scan[item]].add_(grads[row], alpha=float(weights[item_step[item]]))
        if layer is not None:
            total = torch.cat([torch.nn.grad.conv3d_input((1, *volumes.shape[1:]), layer.weight, t[None],
                                                          layer.stride, layer.padding, layer.dilation, layer.groups)
                               for t in total])
        return total * delta
