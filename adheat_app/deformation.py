"""Smooth deformations of a voxel grid: a flow with a prescribed divergence, its Jacobian, its inverse.

Displacements are in voxel units, shape ``(3, *grid)``: the map ``psi(i) = i +
v(i)`` sends voxel index ``i`` to ``psi(i)``. A displacement field is the
gradient of a potential whose Laplacian is a given source (solved with the FFT
on a zero-padded grid), so its divergence, and hence to first order its
log-Jacobian, is that source: volume is removed where the source is negative
and added where it is positive. The simulator (:mod:`adheat_app.simulate`)
builds its tissue-loss atrophy, age-related atrophy and ventricle size from it.
"""

from __future__ import annotations

import numpy as np
from scipy import fft, ndimage


def potential_flow(source: np.ndarray, pad: int = 16) -> np.ndarray:
    """Displacement ``v = grad(u)`` with ``laplacian(u) = source``: a flow whose divergence is ``source``.

    The potential and its gradient are computed spectrally on the grid padded
    with ``pad`` zero voxels per side (so the divergence of the band-limited
    field is the source less its mean, the Nyquist components set to 0). A
    source whose sum is 0 gives a field that decays like a dipole away from it.

    Parameters
    ----------
    source : numpy.ndarray
        Desired divergence on the grid (per voxel, dimensionless).
    pad : int
        Zero voxels added on each side before the periodic solve.

    Returns
    -------
    numpy.ndarray
        float64 displacement ``(3, *source.shape)`` in voxels.
    """
    padded = np.pad(np.asarray(source, dtype=np.float64), pad)
    spectrum = fft.rfftn(padded, workers=1)
    shape = padded.shape
    frequencies = []
    for axis, n in enumerate(shape):
        freq = fft.rfftfreq(n) if axis == len(shape) - 1 else fft.fftfreq(n)
        omega = 2 * np.pi * freq
        omega[np.isclose(np.abs(freq), 0.5)] = 0.0  # no derivative of the Nyquist component
        frequencies.append(omega.reshape([-1 if a == axis else 1 for a in range(3)]))
    laplacian = -(frequencies[0] ** 2 + frequencies[1] ** 2 + frequencies[2] ** 2)
    potential = np.divide(spectrum, laplacian, out=np.zeros_like(spectrum), where=laplacian < 0)
    crop = tuple(slice(pad, pad + n) for n in source.shape)
    return np.stack([fft.irfftn(1j * omega * potential, shape, workers=1)[crop] for omega in frequencies])


def _upsample(array: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` at ``factor`` evenly spaced points inside every voxel along ``axis``."""
    before = np.concatenate([np.take(array, [0], axis=axis), np.delete(array, -1, axis=axis)], axis=axis)
    after = np.concatenate([np.delete(array, 0, axis=axis), np.take(array, [-1], axis=axis)], axis=axis)
    parts = [(1 - abs(o)) * array + abs(o) * (before if o < 0 else after)
             for o in (np.arange(factor) + 0.5) / factor - 0.5]
    stacked = np.stack(parts, axis=axis + 1)
    shape = list(array.shape)
    shape[axis] *= factor
    return stacked.reshape(shape)


def sub_voxel_gradients(displacement: np.ndarray, box: tuple[slice, slice, slice], factor: int = 2
                        ) -> np.ndarray:
    """``Dv`` of the trilinear field at ``factor**3`` points inside every voxel of ``box``.

    Derivatives are central differences between the sub-points (the field is
    extended by its edge values beyond the grid).

    Returns
    -------
    numpy.ndarray
        ``(*box shape, factor**3, 3, 3)``, ``[..., k, i, j] = d v_i / d x_j`` at sub-point ``k``.
    """
    padded = np.pad(displacement, ((0, 0), (1, 1), (1, 1), (1, 1)), mode="edge")
    fine = padded[(slice(None), *(slice(b.start, b.stop + 2) for b in box))]
    for axis in (1, 2, 3):
        fine = _upsample(fine, factor, axis)
    inner = (slice(factor, -factor),) * 3
    gradient = np.stack([np.stack(np.gradient(c, 1.0 / factor), axis=0)[(slice(None), *inner)] for c in fine])
    shape = [b.stop - b.start for b in box]
    gradient = gradient.reshape(3, 3, shape[0], factor, shape[1], factor, shape[2], factor)
    return gradient.transpose(2, 4, 6, 3, 5, 7, 0, 1).reshape(*shape, factor**3, 3, 3)


def determinant(matrices: np.ndarray) -> np.ndarray:
    """Determinants of a stack of 3x3 matrices ``(..., 3, 3)`` by the explicit formula (faster than LU here)."""
    m = matrices
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def cell_jacobian(displacement: np.ndarray, factor: int = 2, slab: int = 8) -> np.ndarray:
    """Volume ratio ``|psi(cube)| / |cube|`` of every voxel cube under ``psi(i) = i + v(i)``, ``v`` trilinear.

    The determinant of ``I + Dv`` is averaged over ``factor**3`` points per
    voxel (:func:`sub_voxel_gradients`), which follows the trilinear field the
    images are sampled with rather than the coarser central difference between
    voxel centres; ``factor`` 2 agrees with 8 to about 1e-3 on smooth flows.
    ``slab`` voxel planes are evaluated at a time, to bound memory.
    """
    shape = displacement.shape[1:]
    out = np.empty(shape)
    for first in range(0, shape[0], slab):
        box = (slice(first, min(first + slab, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
        out[box] = determinant(sub_voxel_gradients(displacement, box, factor) + np.eye(3)).mean(axis=-1)
    return out


def sample_field(field: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Trilinear samples of a displacement ``(3, *grid)`` at voxel coordinates ``index`` ``(3, ...)``.

    Outside the grid the nearest edge value is used.
    """
    return np.stack([ndimage.map_coordinates(c, index, order=1, mode="nearest") for c in field])


def invert_displacement(displacement: np.ndarray) -> np.ndarray:
    """Displacement ``u`` of the inverse map on the grid: ``j + u(j) + v(j + u(j)) = j``."""
    index = np.indices(displacement.shape[1:], dtype=np.float64)
    return solve_preimage(displacement, index, index - displacement) - index


def solve_preimage(displacement: np.ndarray, target: np.ndarray, start: np.ndarray, tolerance: float = 1e-3,
                   max_iterations: int = 50) -> np.ndarray:
    """Points ``y`` with ``y + v(y) = target`` for the trilinear field ``v`` (voxel coordinates ``(3, ...)``).

    Newton iterations from ``start``, with ``Dv`` by central differences on
    the grid, interpolated (so convergence is fast but not quadratic).

    Raises
    ------
    ValueError
        If the points have not converged to ``tolerance`` voxels (the map folds).
    """
    gradient = np.stack([np.stack(np.gradient(c), axis=0) for c in displacement]).reshape(9, *displacement.shape[1:])
    points = np.array(start, dtype=np.float64)
    for _ in range(max_iterations):
        residual = points + sample_field(displacement, points) - target
        worst = float(np.abs(residual).max(initial=0.0))
        if worst < tolerance:
            return points
        jacobian = np.moveaxis(sample_field(gradient, points), 0, -1).reshape(*points.shape[1:], 3, 3) + np.eye(3)
        step = np.linalg.solve(jacobian, np.moveaxis(residual, 0, -1)[..., None])[..., 0]
        points -= np.moveaxis(step, -1, 0)
    raise ValueError(f"the displacement could not be inverted at some points (residual {worst:.3g} voxels)")
