"""``rieke2018``: the 4-block 3D CNN of Rieke et al. (2018, MLCN, LNCS 11038).

Architecture as Rieke et al. (2018) publish it: four blocks of
``Conv3d 3x3x3 (no padding) -> BatchNorm3d -> ReLU -> MaxPool3d`` with 8, 16, 32
and 64 feature maps and pooling edges 2, 3, 2, 3; then ``Dropout(0.8) ->
Linear(flat, 128) -> ReLU -> Linear(128, 64) -> ReLU -> Linear(64, 2)``. On
the 1 mm grid (193x229x193) the last block gives 64x4x5x4 features, as in the
paper; at 2 mm (97x115x97) 64x1x2x1.

Adaptation and guesses
----------------------
- Coarse grids: at 4 mm (about 50x59x48) floor-mode pooling collapses an axis
  to zero after the fourth block, so there every pooling uses ``ceil_mode``
  (64x1x1x1 features), by the layout rule of :mod:`adheat_app.models._blocks`.
  1 mm and 2 mm keep the published floor mode. This switch is ours.
- ``Dropout(0.8)`` is read as PyTorch's drop *probability* 0.8, as in the
  authors' released code; the paper's text does not say keep or drop.
- Inputs are z-scored inside the brain mask per image by preprocessing
  (the paper z-scored voxel-wise over training images).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from adheat_app.models import MODELS
from adheat_app.models._blocks import PlainCNN, build_plain_cnn

CHANNELS = (8, 16, 32, 64)
KERNELS = (3, 3, 3, 3)
POOLS = (2, 3, 2, 3)
DROPOUT = 0.8


def _head(n_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(DROPOUT), nn.Linear(n_features, 128), nn.ReLU(),
                         nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 2))


@MODELS.register("rieke2018")
def build(shape: Sequence[int], channels: int = 1) -> PlainCNN:
    """Rieke et al. (2018) 3D CNN for input grids of ``shape`` ``(X, Y, Z)``.

    Returns
    -------
    PlainCNN
        Maps ``(N, channels, X, Y, Z)`` to ``(N, 2)`` logits; ``last_conv`` is the
        fourth convolution.
    """
    return build_plain_cnn(shape, CHANNELS, KERNELS, POOLS, "rieke2018", _head, channels)
