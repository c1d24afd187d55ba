"""Brain-area occlusion (Rieke et al. 2018): one AAL3 region at a time is filled (``--occlusion-fill``).

Relevance of a region = drop of the explained output (``--explain-output``) when the scan is
filled inside the region (zeros, or the fold's training mean image), clipped at 0 and painted into the region.
Regions come from :func:`adheat_app.templates.get_atlas` (AAL3 on the analysis
grid); voxels outside every region get 0.
"""

from __future__ import annotations

import torch

from adheat_app.attribution import METHODS
from adheat_app.attribution.occlusion import Ablation, Occluded
from adheat_app.templates import get_atlas


@METHODS.register("AreaOcclusion")
class AreaOcclusion(Ablation):
    """One atlas region at a time occluded (unsigned)."""

    name = "AreaOcclusion"
    atlas = "AAL3"
    order = 7
    sets = ("rieke2018",)
    source = "Rieke 2018"
    summary = "drop in the explained output when one AAL3 region at a time is filled with `--occlusion-fill`"

    def parameters(self) -> dict:
        """Atlas, fill value and output explained."""
        return {"Atlas": self.atlas, "Fill": self.options.occlusion_fill, "Output": self.output, "ClippedAtZero": True}

    def occluded_sets(self, shape: tuple[int, int, int], device: torch.device) -> list[Occluded]:
        """One boolean mask per atlas region present on the grid."""
        atlas = get_atlas(self.context.resolution, self.context.space, self.atlas)
        labels = torch.from_numpy(atlas.array()).to(device)
        if tuple(labels.shape) != shape:
            raise ValueError(f"the {self.atlas} atlas grid {tuple(labels.shape)} differs from the scans' {shape}")
        return [labels == value for value in sorted(atlas.labels)]
