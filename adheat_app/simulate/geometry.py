"""Grid helpers of the simulator: world coordinates of a voxel grid and NIfTI images with both forms set."""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np


def affine_points(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates of every voxel of a grid, shape ``(3, *shape)``."""
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    points = np.empty((3, *shape))
    for row in range(3):
        points[row] = affine[row, 3]
        for axis in range(3):
            points[row] += affine[row, axis] * axes[axis].reshape([-1 if a == axis else 1 for a in range(3)])
    return points


def nifti(data: np.ndarray, affine: np.ndarray, code: int) -> nib.Nifti1Image:
    """A NIfTI image with matching qform and sform of ``code`` and mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    return img
