"""``wang2023``: model family A of Wang et al. (2023, NeuroImage 269:119929).

Architecture as Wang et al. (2023) publish it: five blocks of
``Conv3d (no padding) -> BatchNorm3d -> ReLU -> MaxPool3d`` with conv kernels
7, 5, 5, 3, 3 and pooling edge 2 each, every layer ``width`` channels (the
paper's n = 24 ... 52; default 24 = their ``modelA24``), then ``Linear(flat, 64)
-> ReLU -> Dropout(0.5) -> Linear(64, 2)``. On the 1 mm grid the last conv
output is 7x9x7 (pooled 3x4x3), as in the paper.

Adaptation and guesses (the layout rule of :mod:`adheat_app.models._blocks`)
-----------------------------------------------------------------------------
- 2 mm (97x115x97): the fifth floor-mode pooling would reduce the 1-voxel
  axes to 0, so every pooling uses ``ceil_mode`` (width x 1x2x1 features).
- 4 mm (about 50x59x48): even with ceil-mode pooling the fifth 3x3x3 conv
  meets a 1-voxel grid, so every convolution is padded by ``kernel // 2``
  ("same") with floor-mode pooling (width x 1x1x1 features).
- These switches are ours; the 1 mm grid keeps the published layout.
- Wang et al. min-max scaled each image to [0, 1]; adheat feeds the images
  z-scored inside the brain mask, like every other model here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from adheat_app.models import MODELS
from adheat_app.models._blocks import PlainCNN, build_plain_cnn

KERNELS = (7, 5, 5, 3, 3)
POOLS = (2, 2, 2, 2, 2)
DEFAULT_WIDTH = 24


def _head(n_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2))


@MODELS.register("wang2023")
def build(shape: Sequence[int], channels: int = 1, width: int = DEFAULT_WIDTH) -> PlainCNN:
    """Wang et al. (2023) model A with ``width`` channels per layer for input grids ``shape``.

    Returns
    -------
    PlainCNN
        Maps ``(N, channels, X, Y, Z)`` to ``(N, 2)`` logits; ``last_conv`` is the
        fifth convolution.
    """
    return build_plain_cnn(shape, (width,) * len(KERNELS), KERNELS, POOLS, "wang2023", _head, channels)
