"""A subject's anatomy: individual displacement, age, ventricles and the calibrated planted atrophy.

Everything here lives on the template grid (:class:`~adheat_app.simulate.anatomy.GroundTruth`) and is
shared by all sessions of a subject; :func:`sample_subject` reads the subject's tissue fractions and atlas
labels at any set of points, which the native scans and the template-space writer sample.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage, optimize

from adheat_app.deformation import (
    cell_jacobian,
    determinant,
    invert_displacement,
    solve_preimage,
    sample_field,
    sub_voxel_gradients,
)
from adheat_app.simulate.anatomy import ANATOMY_GRID_MM, GroundTruth, atrophy_flow
from adheat_app.simulate.cohort import SubjectSpec, child_seed
from adheat_app.simulate.regions import region_losses


SHIFT_MM_PER_EFFECT = 3.0
AGE_REFERENCE = 73.0
GM_LOSS_PER_YEAR = 0.009
ANISOTROPY = 0.03
ANATOMY_SD_MM = 1.5
ANATOMY_SIGMA_MM = 12.0
FOLDING_SD_MM = 0.7
FOLDING_SIGMA_MM = 4.0
#: This module's model parameters, as the dataset description records them.
PARAMETERS = {"shift_mm_per_effect": SHIFT_MM_PER_EFFECT, "age_reference": AGE_REFERENCE,
              "gm_loss_per_year": GM_LOSS_PER_YEAR, "anisotropy": ANISOTROPY, "anatomy_sd_mm": ANATOMY_SD_MM,
              "anatomy_sigma_mm": ANATOMY_SIGMA_MM, "folding_sd_mm": FOLDING_SD_MM,
              "folding_sigma_mm": FOLDING_SIGMA_MM}


@dataclasses.dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """A subject's individual anatomy and atrophy, shared by all its sessions.

    Attributes
    ----------
    displacement : numpy.ndarray
        Displacement ``d_s`` (mm, world axes) on the coarse grid of
        :class:`GroundTruth`, shape ``(3, *anatomy_shape)``.
    scaling : numpy.ndarray
        Head size per world axis (applied with the pose).
    anatomy_pullback : numpy.ndarray
        Inverse of the age and ventricle flow (voxels, ``(3, *grid)``).
    atrophy_pullback : numpy.ndarray or None
        The darkening model's inward warp (voxels, ``(3, *grid)``, subject to
        template); None for tissue-loss and without atrophy.
    atrophy_forward : numpy.ndarray or None
        The planted tissue-loss flow (voxels, ``(3, *grid)``, template to
        subject), inverted at every sampled point; None for darkening and
        without atrophy.
    log_jacobian : numpy.ndarray or None
        Log-Jacobian of the planted deformation in the parent's anatomy
        (float32); None without atrophy.
    losses : dict of int to float
        Planted fractional loss of every AAL3 region of ``R`` (label value ->
        loss; :func:`adheat_app.simulate.regions.region_losses`).
    planted_loss : float
        The mean of those losses over the voxels of ``R``: the fraction of
        ``R``'s volume (tissue-loss) or mean intensity (darkening) planted.
    volume_loss : float
        Fraction of the region's volume the planted deformation removes.
    shift : float
        Largest inward displacement ``c_s`` of the darkening model (mm; 0 otherwise).
    gain : float
        Intensity-decrease gain ``g_s`` of the darkening model (0 otherwise).
    """

    displacement: np.ndarray
    scaling: np.ndarray
    anatomy_pullback: np.ndarray
    atrophy_pullback: np.ndarray | None
    atrophy_forward: np.ndarray | None
    log_jacobian: np.ndarray | None
    losses: dict[int, float]
    planted_loss: float
    volume_loss: float
    shift: float
    gain: float

    def max_displacement(self, resolution: float) -> float:
        """Bound (mm) on how far the warp moves any point: the sum of the fields' largest lengths.

        The fields are interpolated linearly, which never exceeds their largest length.
        """
        fields = [f for f in (self.anatomy_pullback, self.atrophy_pullback, self.atrophy_forward) if f is not None]
        grid = sum(float(np.sqrt((f**2).sum(axis=0)).max()) for f in fields) * resolution
        return float(np.sqrt((self.displacement**2).sum(axis=0)).max()) + grid


@dataclasses.dataclass(frozen=True)
class Sample:
    """A subject's anatomy sampled at a set of points (before scanner effects)."""

    fractions: np.ndarray  # CSF, GM, WM, shape (3, ...)
    factor: np.ndarray | float  # darkening intensity factor
    labels: np.ndarray  # AAL3 labels (nearest neighbour)

    def intensity(self, means: np.ndarray) -> np.ndarray:
        """Synthesised intensity for CSF, GM and WM intensities ``means``."""
        return np.einsum("c,c...->...", means, self.fractions) * self.factor

    def tissue(self) -> np.ndarray:
        """Tissue label of largest fraction (1 CSF, 2 GM, 3 WM), 0 where the brain fraction is below 0.5."""
        return np.where(self.fractions.sum(axis=0) >= 0.5, self.fractions.argmax(axis=0) + 1, 0).astype(np.uint8)


def _atrophy_gain(truth: GroundTruth, shift: float, loss: float) -> float:
    """Gain ``g`` for which the darkened template loses exactly ``loss`` of its mean intensity in ``R``.

    Raises
    ------
    ValueError
        If the deformation alone already removes more than ``loss`` (no
        non-negative gain exists).
    """
    region = truth.region
    index = np.indices(truth.template.shape)[:, region] + shift / truth.template.resolution * truth.push[:, region]
    deformed = ndimage.map_coordinates(truth.intensity, index, order=1)
    weight = truth.probseg[region]
    target = (1.0 - loss) * float(truth.intensity[region].mean())

    def excess(gain: float) -> float:
        return float(np.mean(deformed * np.exp(-gain * weight))) - target

    if excess(0.0) < 0:
        raise ValueError(f"the deformation of {shift:.2f} mm alone removes more than {loss:.3f} of the intensity "
                         f"of {truth.regions}; use a larger effect size or other regions")
    upper = 1.0
    while excess(upper) > 0:
        upper *= 2
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-12))


def _tissue_loss_amplitude(truth: GroundTruth, flow: np.ndarray, loss: float) -> float:
    """Amplitude ``A`` of the atrophy ``flow`` for which ``R`` loses exactly ``loss`` of its volume.

    The volume is that of the voxel cubes of ``R`` under the trilinear flow
    (:func:`adheat_app.deformation.cell_jacobian`), as the scans sample it.

    Raises
    ------
    ValueError
        If no amplitude reaches ``loss`` before the deformation folds.
    """
    corners = np.argwhere(truth.region)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(corners.min(axis=0), corners.max(axis=0)))
    gradients = sub_voxel_gradients(flow, box)[truth.region[box]]
    identity = np.eye(3)

    def remaining(amplitude: float) -> float:
        return float(determinant(identity + amplitude * gradients).mean()) - (1.0 - loss)

    upper = 0.25
    while remaining(upper) > 0 and upper < 64:
        upper *= 2
    amplitude = float(optimize.brentq(remaining, 0.0, upper, xtol=1e-10)) if remaining(upper) <= 0 else math.inf
    if not math.isfinite(amplitude) or determinant(identity + amplitude * gradients).min() <= 0.05:
        raise ValueError(f"a planted volume loss of {loss:.3f} in {truth.regions} folds the deformation; "
                         "use a smaller effect size or larger regions")
    return amplitude


def subject_anatomy(truth: GroundTruth, spec: SubjectSpec) -> SubjectAnatomy:
    """Draw a subject's displacement fields and head size, and calibrate its atrophy region by region.

    ``truth`` is the anatomy of the subject's parent (``spec.anatomy``); the
    subject's region losses follow :func:`adheat_app.simulate.regions.region_losses`.
    """
    rng = np.random.default_rng(child_seed(spec.seed, 1))
    field = np.zeros((3, *truth.anatomy_shape))
    for sd, sigma in ((ANATOMY_SD_MM, ANATOMY_SIGMA_MM), (FOLDING_SD_MM, FOLDING_SIGMA_MM)):
        noise = rng.standard_normal((3, *truth.anatomy_shape))
        smooth = np.stack([ndimage.gaussian_filter(c, sigma / ANATOMY_GRID_MM) for c in noise])
        field += smooth * (sd / smooth.std(axis=(1, 2, 3), keepdims=True))
    scaling = spec.head_scale * (1.0 + rng.uniform(-ANISOTROPY, ANISOTROPY, 3))
    # First order: the inverse of the small flow y -> y + f(y) is y -> y - f(y).
    anatomy_pullback = -(GM_LOSS_PER_YEAR * (spec.age - AGE_REFERENCE) * truth.age_flow
                         + math.log(spec.ventricle_scale) * truth.ventricle_flow)
    names = {value: truth.names[value] for value in truth.region_values}
    if spec.atrophy_model == "tissue-loss":
        losses = region_losses(names, spec.scale, spec.subtype, spec.asymmetry)
    else:  # darkening: one uniform loss
        losses = {value: spec.scale for value in names}
    lookup = np.zeros(int(truth.labels.max()) + 1)
    lookup[list(losses)] = list(losses.values())
    loss_map = lookup[truth.labels] * truth.region
    loss = float(loss_map[truth.region].mean())
    shift = gain = 0.0
    if loss <= 0:
        return SubjectAnatomy(field.astype(np.float32), scaling, anatomy_pullback.astype(np.float32), None, None,
                              None, losses, 0.0, 0.0, shift, gain)
    pullback = None
    if spec.atrophy_model == "tissue-loss":
        flow = atrophy_flow(truth, loss_map)
        forward = _tissue_loss_amplitude(truth, flow, loss) * flow
    else:
        shift = SHIFT_MM_PER_EFFECT * loss
        gain = _atrophy_gain(truth, shift, loss)
        pullback = (shift / truth.template.resolution * truth.push).astype(np.float32)
        forward = invert_displacement(pullback.astype(np.float64))
    determinant = cell_jacobian(forward)
    volume_loss = 1.0 - float(determinant[truth.region].mean())
    return SubjectAnatomy(field.astype(np.float32), scaling, anatomy_pullback.astype(np.float32), pullback,
                          forward.astype(np.float32) if pullback is None else None,
                          np.log(determinant).astype(np.float32), losses, loss, volume_loss, shift, gain)


def sample_subject(truth: GroundTruth, anatomy: SubjectAnatomy, points: np.ndarray, individual: bool = True) -> Sample:
    """A subject's tissue fractions, darkening factor and atlas labels at world ``points`` ``(3, ...)``.

    ``points`` are in the subject's anatomical space (template-aligned, before
    pose). With ``individual`` False the individual displacement, age and
    ventricle flows are left out: the template with only the planted atrophy.
    """
    if individual:
        coarse = (points - truth.anatomy_origin.reshape((3,) + (1,) * (points.ndim - 1))) / ANATOMY_GRID_MM
        points = points + sample_field(anatomy.displacement, coarse)
    index = truth.to_index(points)
    outline = index  # tissue flows inside the brain envelope, which moves only with d_s (and darkening's warp)
    if individual:
        index = index + sample_field(anatomy.anatomy_pullback, index)
    factor: np.ndarray | float = 1.0
    if anatomy.gain:
        factor = np.exp(-anatomy.gain * ndimage.map_coordinates(truth.probseg, index, order=1))
    if anatomy.atrophy_forward is not None:
        index = solve_preimage(anatomy.atrophy_forward, index, index - sample_field(anatomy.atrophy_forward, index))
    elif anatomy.atrophy_pullback is not None:  # darkening warps the whole image, as it always did
        index = outline = index + sample_field(anatomy.atrophy_pullback, index)
    envelope = ndimage.map_coordinates(truth.envelope, outline, order=1)
    tissue = np.stack([ndimage.map_coordinates(truth.fractions[c], index, order=1) for c in (1, 2)])
    total = tissue.sum(axis=0)
    tissue *= np.minimum(1.0, envelope / np.where(total > 0, total, 1.0))  # tissue stays inside the envelope
    csf = np.clip(envelope - tissue.sum(axis=0), 0.0, None)
    fractions = np.concatenate([csf[None], tissue])
    return Sample(fractions, factor, ndimage.map_coordinates(truth.labels, index, order=0))
