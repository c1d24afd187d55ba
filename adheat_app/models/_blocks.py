"""Building blocks shared by the plain (VGG-like) 3D CNNs: conv blocks and grid arithmetic.

The Rieke et al. (2018) and Wang et al. (2023) networks are both stacks of
``Conv3d (no padding) -> BatchNorm3d -> ReLU -> MaxPool3d`` blocks followed by a
fully connected head. Both were designed for the 1 mm grid (193x229x193); on
coarser grids a stack of valid convolutions and floor-mode poolings runs out of
voxels. :func:`plan_layout` walks the stack over the input grid and keeps the
published layout (valid convolutions, floor-mode pooling) whenever it fits.
Only when an axis would collapse does it switch every pooling to
``ceil_mode=True`` (a partial window at the border is pooled instead of
dropped), and only when that does not fit either does it pad every
convolution by ``kernel // 2`` (grid kept, floor pooling). The layers, kernels
and channel counts stay those of the papers; the layout chosen is recorded as
the model's ``layout`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn


class Layout(NamedTuple):
    """How a stack of conv blocks is laid out on a grid."""

    padded: bool
    """Convolutions padded by ``kernel // 2`` (grid kept) instead of valid."""
    ceil_mode: bool
    """Max-pooling keeps a partial window at the border."""


#: Layouts tried in order: as published, then ceil-mode pooling, then padded convolutions.
LAYOUTS = (Layout(False, False), Layout(False, True), Layout(True, False))


def conv_output(size: int, kernel: int, pool: int, layout: Layout) -> int:
    """Length of one axis after one conv block (0 when the block does not fit)."""
    after_conv = size if layout.padded else size - kernel + 1
    if after_conv < 1:
        return 0
    return -(-after_conv // pool) if layout.ceil_mode else after_conv // pool


def stack_output(shape: Sequence[int], kernels: Sequence[int], pools: Sequence[int],
                 layout: Layout) -> tuple[int, ...]:
    """Grid after the whole stack of conv blocks (an axis of 0 means the stack does not fit)."""
    out = list(shape)
    for kernel, pool in zip(kernels, pools):
        out = [conv_output(s, kernel, pool, layout) for s in out]
    return tuple(out)


def plan_layout(shape: Sequence[int], kernels: Sequence[int], pools: Sequence[int],
                name: str) -> tuple[Layout, tuple[int, ...]]:
    """The first layout of :data:`LAYOUTS` whose stack keeps every axis of ``shape``.

    Returns
    -------
    layout : Layout
        Published (valid convs, floor pooling) when it fits; else ceil-mode
        pooling; else padded ("same") convs with floor pooling.
    features : tuple of int
        Grid of the last block's output.

    Raises
    ------
    ValueError
        When no layout fits the grid.
    """
    for layout in LAYOUTS:
        features = stack_output(shape, kernels, pools, layout)
        if min(features) >= 1:
            return layout, features
    raise ValueError(f"model {name}: the input grid {'x'.join(map(str, shape))} is too small for its "
                     f"convolutions (kernels {list(kernels)}, pools {list(pools)}); use a finer --resolution")


class ConvBlock(nn.Sequential):
    """``Conv3d (valid) -> BatchNorm3d -> ReLU -> MaxPool3d``: one block of the plain CNNs.

    Attributes ``conv``, ``bn``, ``relu`` and ``pool`` name the layers, so
    attribution code can reach them (the BatchNorm directly follows its conv).
    The block runs the max-pooling before the ReLU: the two commute (ReLU is
    monotone, so the largest rectified value is the rectified largest value,
    and the gradient reaches the same voxel), and rectifying the pooled grid
    touches 8 to 27 times fewer values (``docs/performance.md``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, pool: int, layout: Layout):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=kernel,
                              padding=kernel // 2 if layout.padded else 0)
        self.bn = nn.BatchNorm3d(out_channels)
        self.pool = nn.MaxPool3d(pool, ceil_mode=layout.ceil_mode)
        self.relu = nn.ReLU()


class PlainCNN(nn.Module):
    """A stack of :class:`ConvBlock` s and a fully connected head.

    Parameters
    ----------
    blocks : sequence of ConvBlock
        The convolutional feature extractor.
    head : nn.Sequential
        Maps the flattened features to two logits.
    layout : Layout
        How the blocks were laid out for the input grid.
    """

    def __init__(self, blocks: Sequence[ConvBlock], head: nn.Sequential, layout: Layout):
        super().__init__()
        self.features = nn.Sequential(*blocks)
        self.head = head
        self.layout = layout

    @property
    def last_conv(self) -> nn.Conv3d:
        """The last convolution (target layer of Guided Grad-CAM)."""
        return self.features[-1].conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 2)`` of volumes ``(N, C, X, Y, Z)``."""
        return self.head(torch.flatten(self.features(x), 1))


def build_plain_cnn(shape: Sequence[int], channels: Sequence[int], kernels: Sequence[int],
                    pools: Sequence[int], name: str,
                    head_builder: Callable[[int], nn.Sequential], in_channels: int = 1) -> PlainCNN:
    """Assemble a :class:`PlainCNN` for the input grid ``shape``.

    Parameters
    ----------
    shape : sequence of int
        Input grid ``(X, Y, Z)``.
    channels, kernels, pools : sequence of int
        Output channels, conv kernel edge and pooling edge of each block.
    name : str
        Model name (for error messages).
    head_builder : callable
        ``head_builder(n_features) -> nn.Sequential`` builds the classifier on
        the flattened features.
    in_channels : int
        Input channels.
    """
    layout, grid = plan_layout(shape, kernels, pools, name)
    blocks = []
    for out_channels, kernel, pool in zip(channels, kernels, pools):
        blocks.append(ConvBlock(in_channels, out_channels, kernel, pool, layout))
        in_channels = out_channels
    n_features = in_channels * grid[0] * grid[1] * grid[2]
    return PlainCNN(blocks, head_builder(n_features), layout)
