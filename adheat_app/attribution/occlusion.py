"""Occlusion (Zeiler & Fergus 2014, as Rieke et al. 2018): a zero cube slides over the scan.

Relevance of a voxel = drop of the target class probability when a patch
covering it is set to 0, averaged over the patches that cover it (captum's
:class:`~captum.attr.Occlusion` convention, so the results are equal), then
clipped at 0 as Rieke et al. do. Patch edge and stride are options in mm
(Rieke et al.: 40 mm at 1 mm), converted to voxels of the analysis grid.

:class:`Ablation` is the engine shared with brain-area occlusion
(:mod:`.area_occlusion`): every (scan, occluded set) pair is one row, rows of
all scans are packed into padded passes run under ``torch.inference_mode``
(and autocast on CUDA).
"""

from __future__ import annotations

import itertools
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from adheat_app.attribution import METHODS
from adheat_app.attribution.base import Method, class_probability, padded_batches

Occluded = tuple[slice, ...] | torch.Tensor


class Ablation(Method):
    """Relevance = drop of the target probability when a set of voxels is set to 0, painted into the set."""

    signed = False
    slow = True

    @abstractmethod
    def occluded_sets(self, shape: tuple[int, int, int], device: torch.device) -> list[Occluded]:
        """The voxel sets occluded one at a time: index tuples or boolean masks of ``shape``."""

    def attribute(self, model: nn.Module, volumes: torch.Tensor, targets: torch.Tensor, keys: list[str]
                  ) -> torch.Tensor:
        """Occlusion maps of every scan, (scan, set) pairs packed into padded passes."""
        shape = tuple(volumes.shape[2:])
        sets = self.occluded_sets(shape, volumes.device)
        clean = class_probability(model, volumes, targets, self.context)
        total = torch.zeros((len(volumes), *shape), device=volumes.device)
        count = torch.zeros(shape, device=volumes.device)
        for occluded in sets:
            count[occluded] += 1
        item_scan = np.repeat(np.arange(len(volumes)), len(sets))
        item_set = np.tile(np.arange(len(sets)), len(volumes))

        def build(index: np.ndarray) -> torch.Tensor:
            rows = volumes[item_scan[index]].clone()
            for row, item in enumerate(index):
                rows[row, 0][sets[item_set[item]]] = 0
            return rows

        with torch.inference_mode(), torch.autocast(self.context.device.type, enabled=self.context.amp):
            for index, rows in padded_batches(len(item_scan), self.context.batch, build):
                prob = torch.softmax(model(rows).float(), dim=1)[: len(index)]
                scans = item_scan[index]
                drop = clean[scans] - prob[torch.arange(len(index)), targets[scans]]
                for row, item in enumerate(index):
                    total[item_scan[item]][sets[item_set[item]]] += drop[row]
        return (total / count.clamp(min=1)).clamp(min=0)


@METHODS.register("Occlusion")
class Occlusion(Ablation):
    """A cube of zeros slid over the scan (unsigned)."""

    name = "Occlusion"

    def voxels(self, millimetres: float) -> int:
        """A length in mm as a whole number of voxels (at least 1)."""
        return max(1, int(round(millimetres / self.context.resolution)))

    def parameters(self) -> dict:
        """Patch edge and stride (mm and voxels), fill value and output explained."""
        return {"PatchMM": self.options.occlusion_size, "StrideMM": self.options.occlusion_stride,
                "PatchVoxels": self.voxels(self.options.occlusion_size),
                "StrideVoxels": self.voxels(self.options.occlusion_stride), "Fill": 0.0,
                "Output": "probability", "ClippedAtZero": True}

    def occluded_sets(self, shape: tuple[int, int, int], device: torch.device) -> list[Occluded]:
        """Every patch position on captum's grid (the last patch of an axis may be cut by the border)."""
        size = [min(self.voxels(self.options.occlusion_size), n) for n in shape]
        stride = self.voxels(self.options.occlusion_stride)
        starts = [range(0, stride * (-(-(n - s) // stride)) + 1, stride) for n, s in zip(shape, size)]
        return [tuple(slice(a, a + s) for a, s in zip(corner, size)) for corner in itertools.product(*starts)]
