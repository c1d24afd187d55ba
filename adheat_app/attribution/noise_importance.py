"""Learned noise importance (Bintsi et al. 2021, U-Noise style): voxels that cannot take noise matter.

For each scan a noise-tolerance map ``B = sigmoid(theta)`` in (0, 1) is
learned (``theta`` on a grid :data:`COARSE` times coarser than the scan,
upsampled trilinearly: smooth, and fast to fit, instead of Bintsi et al.'s
U-Net) so that the frozen classifier still predicts the target class from the
noisy scan ``x + eps * (B * (s_max - s_min) + s_min)``, ``eps ~ N(0, 1)``:

    loss = task(model(noisy)) - lambda * mean(log B)

where the task term follows ``--explain-output`` (:mod:`.output`):
``probability`` is Bintsi et al.'s cross-entropy ``-log p_target``
(computed as ``-log sigmoid(d)``, whose gradient does not saturate),
``difference`` (default) is ``-d = -(z_target - z_other)``, ``logit`` is
``-z_target``
(``lambda = --noise-lambda``, default 1e-3 as Bintsi et al.; Adam, learning
rate :data:`LEARNING_RATE`, ``--noise-steps`` steps, ``theta = 0`` at the
start). Importance = ``1 - B`` (unsigned). The noise scale ``s_min = 0``,
``s_max = 1`` is in the units of the z-scored scans (Bintsi et al.'s 1..5 was
on their own intensity scale).

Every scan draws its noise from its own generator, seeded from the run seed
and the scan key, and the loss is a sum over rows (Adam is element-wise), so a
scan's map does not depend on which scans share its pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Method, pad_targets, padded_batches, per_channel, scan_seed
from adheat_app.attribution.output import explained

COARSE = 4
LEARNING_RATE = 0.1
S_MIN, S_MAX = 0.0, 1.0


@METHODS.register("NoiseImportance")
class NoiseImportance(Method):
    """1 - learned noise tolerance (unsigned)."""

    name = "NoiseImportance"
    signed = False
    slow = True
    uses = ("noise_steps", "noise_lambda")
    order = 8
    source = "Bintsi 2021"
    summary = ("learned per-voxel noise map: the most noise that keeps the explained output; importance = "
               "1 − noise")

    def parameters(self) -> dict:
        """Regularisation, steps, optimiser, noise scale and map resolution."""
        return {"Lambda": self.options.noise_lambda, "Steps": self.options.noise_steps,
                "LearningRate": LEARNING_RATE, "NoiseMin": S_MIN, "NoiseMax": S_MAX, "CoarseFactor": COARSE,
                "Output": self.output}

    def task_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The term the noise must keep low, summed over rows (see the module docstring)."""
        if self.output == "probability":
            return -F.logsigmoid(explained(logits, targets, "difference")).sum()
        return -explained(logits, targets, self.output).sum()

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str],
                  template: torch.Tensor | None = None) -> torch.Tensor:
        """Fit one tolerance map per scan, ``context.batch`` scans per padded pass."""
        shape = tuple(volumes.shape[2:])
        coarse = tuple(max(1, -(-n // COARSE)) for n in shape)
        batch = self.context.batch
        out = torch.empty(volumes.shape, device=volumes.device)
        for index, rows in padded_batches(len(volumes), batch, lambda i: volumes[i]):
            generators = [torch.Generator().manual_seed(scan_seed(self.context.seed, keys[i])) for i in index]
            theta = torch.zeros((batch, volumes.shape[1], *coarse), device=volumes.device, requires_grad=True)
            optimiser = torch.optim.Adam([theta], lr=LEARNING_RATE)
            chosen = pad_targets(targets[index], batch)
            for _ in range(self.options.noise_steps):
                tolerance = F.interpolate(torch.sigmoid(theta), size=shape, mode="trilinear", align_corners=False)
                eps = torch.zeros_like(rows)
                for row, generator in enumerate(generators):
                    eps[row] = torch.randn(rows.shape[1:], generator=generator).to(rows.device)
                noisy = rows + eps * (tolerance * (S_MAX - S_MIN) + S_MIN)
                task = self.task_loss(model(noisy), chosen)
                penalty = -self.options.noise_lambda * torch.log(tolerance).flatten(1).mean(1).sum()
                optimiser.zero_grad()
                (task + penalty).backward()
                optimiser.step()
            with torch.no_grad():
                tolerance = F.interpolate(torch.sigmoid(theta), size=shape, mode="trilinear", align_corners=False)
            out[index] = 1 - tolerance[: len(index)]
        return per_channel(out)
