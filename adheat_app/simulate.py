"""Simulated BIDS cohort with known, planted atrophy: the ground truth of adheat.

This module owns the ``adheat-simulate`` command and everything it writes: a raw
BIDS dataset of skull-stripped T1w scans of Alzheimer's disease (AD), control
(CN) and optionally MCI subjects made from the analysis template, with atrophy
planted in named AAL3 regions, and a ``derivatives/simulation`` dataset holding
the truth (the planted region in template space; per scan, the planted region
and the hippocampus mapped through the scan's true warp onto its native grid,
so registration accuracy can be measured). The demo and the tests of
preprocessing, training and heatmaps are built on it.

Generative model
----------------
Coordinates are world millimetres. ``T`` is the template T1w on the analysis
grid, scaled so that its 99th percentile inside the brain is 1; ``R`` is the
union of the AAL3 regions whose names contain one of ``regions``;
``w = G_3mm * 1_R`` is ``R`` smoothed by a Gaussian of sigma 3 mm (the
``probseg`` map, 0..1) and ``p = -grad(w) / max|grad(w)|`` points away from
``R``. For subject ``s`` with severity ``sigma_s``:

1. Atrophy, in template space: ``T_s(y) = T(y + c_s p(y)) * exp(-g_s w(y))``.
   The first factor is an inward (shrinking) deformation of at most
   ``c_s = 3 mm * sigma_s * e`` that pulls the surrounding tissue and CSF into
   ``R``; the second is an intensity decrease whose gain ``g_s`` is solved so
   that the loss below is exact.
2. Individual anatomy: ``A_s(x) = T_s(x + d_s(x))``, ``d_s`` Gaussian-smoothed
   (sigma 12 mm) white noise with 1.5 mm standard deviation per component.
3. Native scan: the head sits in the scanner at ``q = Rot (S (x - c)) + t``
   (``c`` the brain centroid, rotations up to 10 degrees about each axis,
   translations up to 10 mm, ``S`` a per-subject scaling of 1 +- 6 % per axis).
   The native grid has voxels of ``resolution * (1 +- 10 %)`` per axis, one of
   :data:`ORIENTATIONS` (axes permuted and flipped in the affine), and a field
   of view 10-25 mm larger than the brain on each side. The scan is
   ``Rician(k * b(v) * A_s(x(v)), n)`` with a smooth multiplicative bias
   ``b = exp(quadratic polynomial)``, a global scale ``k`` in [300, 3000] and
   noise ``n`` of 1-3 % of ``k``, stored as int16 or float32 (half each).

The warps are composed as coordinate maps, and the template is interpolated
once per image (trilinear; labels by nearest neighbour): native voxel ``v``
-> ``x`` (inverse pose) -> ``x1 = x + d_s(x)`` -> ``y = x1 + c_s p(x1)``.
The native masks are ``R(y)`` and hippocampus``(y)`` on the same grid and
affine as the scan.

Effect size
-----------
The effect size ``e`` is the expected fractional loss of mean intensity inside
``R``, in template space before individual anatomy, pose, bias and noise::

    L_s = 1 - mean_R(T_s) / mean_R(T),        E[L_s | AD] = e.

``g_s`` is solved so that ``L_s = sigma_s * e`` exactly, with
``sigma_s ~ U(0.5, 1.5)`` for AD, half such a draw for MCI, and 0 for CN and
for everybody in a ``null`` cohort (whose diagnoses are still balanced).

Reproducibility
---------------
``numpy.random.SeedSequence(seed)`` has child 0 for cohort-wide draws (the
order of diagnoses) and child ``i`` for the ``i``-th subject, which in turn has
child 0 for demographics and severity, 1 for anatomy and ``1 + k`` for session
``k``. Results therefore do not depend on ``nprocs``, and a subject keeps its
anatomy and scans when the cohort grows, gains sessions or is made ``null``.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation

from adheat_app import __version__
from adheat_app.bids import Derivatives, T1wInput, sidecar_path
from adheat_app.errors import EXIT_OK, EXIT_USAGE, InputError
from adheat_app.io import save_nifti, write_json, write_text, write_tsv
from adheat_app.templates import DEFAULT_SPACE, Template, get_atlas, get_template

LOGGER = logging.getLogger(__name__)

#: AAL3 name patterns of the default planted region: medial and inferior temporal lobe.
DEFAULT_REGIONS: tuple[str, ...] = ("Hippocampus", "Amygdala", "ParaHippocampal", "Temporal_Inf")
#: Stored orientations of the native scans (NIfTI axis codes), drawn per scan.
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS", "LIA", "PIL", "ASR")
#: Largest effect size accepted (the most severe subject then loses 75 % of R's intensity).
MAX_EFFECT_SIZE = 0.5
#: Analysis-grid voxel sizes accepted (mm).
MIN_RESOLUTION, MAX_RESOLUTION = 0.5, 8.0

BIDS_VERSION = "1.10.0"
REGION_SIGMA_MM = 3.0
SHIFT_MM_PER_EFFECT = 3.0
SEVERITY_RANGE = (0.5, 1.5)
MCI_FRACTION = 0.5
ANATOMY_SD_MM = 1.5
ANATOMY_SIGMA_MM = 12.0
ANATOMY_GRID_MM = 4.0
ANATOMY_MARGIN_MM = 48.0
SCALING_RANGE = 0.06
ROTATION_DEG = 10.0
TRANSLATION_MM = 10.0
VOXEL_JITTER = 0.10
FOV_MARGIN_MM = (10.0, 25.0)
BIAS_SD = 0.08
INTENSITY_SCALE = (300.0, 3000.0)
NOISE_FRACTION = (0.01, 0.03)
AGE_RANGE = (60, 85)


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """Template-space truth shared by every subject of a cohort.

    Attributes
    ----------
    template : Template
        The analysis template the subjects are made from.
    regions : tuple of str
        AAL3 name patterns of the planted region.
    intensity : numpy.ndarray
        Template T1w scaled so that its 99th percentile inside the brain is 1 (float32).
    labels : numpy.ndarray
        AAL3 labels on the template grid (int16).
    region : numpy.ndarray
        The planted region ``R`` (bool).
    region_values, hippocampus_values : tuple of int
        AAL3 label values making up ``R`` and the hippocampus.
    probseg : numpy.ndarray
        ``R`` smoothed by a Gaussian of sigma 3 mm, 0..1 (float32).
    push : numpy.ndarray
        ``-grad(probseg)`` scaled to a largest length of 1, shape ``(3, *grid)``,
        in world axes (float32).
    names : dict of int to str
        AAL3 region name of every label value.
    distance : numpy.ndarray
        Distance (mm) of every voxel to the nearest brain voxel (float32).
    brain_points : numpy.ndarray
        World coordinates (mm) of the brain voxels, shape ``(3, N)``.
    anatomy_origin : numpy.ndarray
        World coordinates of voxel 0 of the coarse grid (spacing 4 mm) on which
        individual displacement fields are drawn.
    anatomy_shape : tuple of int
        Shape of that coarse grid.
    """

    template: Template
    regions: tuple[str, ...]
    intensity: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    region_values: tuple[int, ...]
    hippocampus_values: tuple[int, ...]
    probseg: np.ndarray
    push: np.ndarray
    names: dict[int, str]
    distance: np.ndarray
    brain_points: np.ndarray
    anatomy_origin: np.ndarray
    anatomy_shape: tuple[int, int, int]

    @property
    def region_names(self) -> list[str]:
        """AAL3 names of the regions making up ``R``."""
        return [self.names[v] for v in self.region_values]

    @property
    def hippocampus_names(self) -> list[str]:
        """AAL3 names of the hippocampus regions."""
        return [self.names[v] for v in self.hippocampus_values]

    def grid_points(self) -> np.ndarray:
        """World coordinates (mm) of every template voxel, shape ``(3, *grid)``."""
        return _affine_points(self.template.affine, self.template.shape)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Template voxel coordinates of world ``points`` (first axis: x, y, z)."""
        inverse = np.linalg.inv(self.template.affine)
        return np.einsum("ij,j...->i...", inverse[:3, :3], points) + inverse[:3, 3].reshape(
            (3,) + (1,) * (points.ndim - 1))


@dataclass(frozen=True)
class SubjectSpec:
    """What the cohort plan decides about one subject.

    Attributes
    ----------
    label : str
        BIDS subject label without ``sub-`` (``"01"``).
    diagnosis : {"AD", "CN", "MCI"}
        Diagnosis written to ``participants.tsv``.
    age : int
        Age in years.
    sex : {"F", "M"}
        Sex written to ``participants.tsv``.
    severity : float
        Atrophy severity ``sigma_s`` applied (0: no atrophy).
    effect_size : float
        The cohort's effect size ``e``.
    seed : numpy.random.SeedSequence
        The subject's own seed.
    sessions : int
        Number of sessions.
    """

    label: str
    diagnosis: str
    age: int
    sex: str
    severity: float
    effect_size: float
    seed: np.random.SeedSequence
    sessions: int

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def intensity_loss(self) -> float:
        """Fractional intensity loss ``L_s = sigma_s * e`` planted in this subject."""
        return self.severity * self.effect_size

    def session_label(self, session: int) -> str | None:
        """BIDS session label of the 0-based ``session`` (None for single-session cohorts)."""
        return f"{session + 1:02d}" if self.sessions > 1 else None


@dataclass(frozen=True, eq=False)
class SubjectAnatomy:
    """A subject's individual anatomy and atrophy, shared by all its sessions.

    Attributes
    ----------
    displacement : numpy.ndarray
        Displacement ``d_s`` (mm, world axes) on the coarse grid of
        :class:`GroundTruth`, shape ``(3, *anatomy_shape)``.
    scaling : numpy.ndarray
        Head-size scaling per world axis (applied with the pose).
    shift : float
        Largest inward displacement ``c_s`` of the atrophy deformation (mm).
    gain : float
        Intensity-decrease gain ``g_s``.
    """

    displacement: np.ndarray
    scaling: np.ndarray
    shift: float
    gain: float

    @property
    def max_displacement(self) -> float:
        """Bound (mm) on how far the warp moves any point: max ``|d_s|`` plus ``c_s``.

        Both fields are interpolated linearly, which never exceeds their largest length.
        """
        return float(np.sqrt((self.displacement**2).sum(axis=0)).max()) + self.shift


@dataclass(frozen=True, eq=False)
class NativeScan:
    """One simulated scan on its native grid.

    Attributes
    ----------
    t1w : nibabel.Nifti1Image
        The T1w scan (int16 or float32).
    atrophy_mask, hippocampus_mask : nibabel.Nifti1Image
        The planted region and the AAL3 hippocampus through the true warp
        (uint8, same grid and affine as ``t1w``).
    orientation : str
        Axis codes of the stored orientation (``"LIA"``).
    """

    t1w: nib.Nifti1Image
    atrophy_mask: nib.Nifti1Image
    hippocampus_mask: nib.Nifti1Image
    orientation: str


def _child(seed: np.random.SeedSequence, index: int) -> np.random.SeedSequence:
    """Child ``index`` of ``seed``, as ``seed.spawn`` makes it, without mutating ``seed``."""
    return np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, index))


def _affine_points(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """World coordinates of every voxel of a grid, shape ``(3, *shape)``."""
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    points = np.empty((3, *shape))
    for row in range(3):
        points[row] = affine[row, 3]
        for axis in range(3):
            points[row] += affine[row, axis] * axes[axis].reshape([-1 if a == axis else 1 for a in range(3)])
    return points


def _nifti(data: np.ndarray, affine: np.ndarray, code: int) -> nib.Nifti1Image:
    """A NIfTI image with matching qform and sform of ``code`` and mm units."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm", "sec")
    return img


def build_ground_truth(resolution: float = 2.0, regions: Sequence[str] = DEFAULT_REGIONS) -> GroundTruth:
    """Template, atlas and planted-region maps on the analysis grid.

    Parameters
    ----------
    resolution : float
        Voxel size of the analysis grid in mm.
    regions : sequence of str
        AAL3 name patterns (case-insensitive substrings) of the planted region.

    Raises
    ------
    InputError
        When a pattern matches no AAL3 region.
    """
    template = get_template(resolution, DEFAULT_SPACE)  # the call get_atlas makes, so its cache is hit
    atlas = get_atlas(resolution)
    regions = tuple(regions)
    try:
        region_values = atlas.region_values(regions)
    except ValueError as exc:
        raise InputError(f"--regions {' '.join(regions)}: {exc}") from None
    hippocampus_values = tuple(atlas.region_values(["hippocampus"]))
    labels = atlas.array().astype(np.int16)
    region = np.isin(labels, region_values)
    brain = template.mask_array()
    intensity = np.asarray(template.t1w.dataobj, dtype=np.float32)
    intensity = intensity / np.float32(np.percentile(intensity[brain], 99))
    probseg = ndimage.gaussian_filter(region.astype(np.float32), REGION_SIGMA_MM / resolution)
    gradient = np.stack(np.gradient(probseg, resolution))  # voxel axes of a diagonal template affine
    world_gradient = np.einsum("ij,j...->i...", template.affine[:3, :3] / resolution, gradient)
    push = -world_gradient / np.sqrt((world_gradient**2).sum(axis=0)).max()
    points = template.affine[:3, :3] @ np.argwhere(brain).T + template.affine[:3, 3:]
    extent = template.affine[:3, :3] @ (np.array(template.shape) - 1)
    low = np.minimum(template.affine[:3, 3], template.affine[:3, 3] + extent) - ANATOMY_MARGIN_MM
    size = np.abs(extent) + 2 * ANATOMY_MARGIN_MM
    shape = tuple(int(math.ceil(s / ANATOMY_GRID_MM)) + 1 for s in size)
    return GroundTruth(
        template=template, regions=regions, intensity=intensity, labels=labels, region=region,
        region_values=tuple(region_values), hippocampus_values=hippocampus_values,
        probseg=probseg.astype(np.float32), push=push.astype(np.float32), names=dict(atlas.labels),
        distance=ndimage.distance_transform_edt(~brain, sampling=resolution).astype(np.float32), brain_points=points,
        anatomy_origin=low, anatomy_shape=shape,
    )


def plan_cohort(n_subjects: int, *, seed: int = 0, effect_size: float = 0.3, null: bool = False,
                n_mci: int = 0, sessions: int = 1) -> list[SubjectSpec]:
    """Decide every subject's label, diagnosis, demographics, severity and seed.

    Parameters
    ----------
    n_subjects : int
        Number of AD plus CN subjects; AD get ``ceil(n / 2)``, CN the rest.
    seed : int
        Root seed of the cohort.
    effect_size : float
        Expected fractional intensity loss inside the planted region in AD (see
        the module docstring).
    null : bool
        When True nobody gets atrophy; the diagnoses stay as they would be.
    n_mci : int
        Extra MCI subjects, at half the AD severity.
    sessions : int
        Sessions per subject.

    Returns
    -------
    list of SubjectSpec
        Subjects ``01, 02, ...`` (zero-padded to the width of the count), the
        diagnoses in an order shuffled with the seed. Age (60-85 years) and sex
        are drawn alike in every group.
    """
    root = np.random.SeedSequence(seed)
    n_ad = (n_subjects + 1) // 2
    diagnoses = ["AD"] * n_ad + ["CN"] * (n_subjects - n_ad) + ["MCI"] * n_mci
    diagnoses = np.random.default_rng(_child(root, 0)).permutation(diagnoses)
    width = max(2, len(str(len(diagnoses))))
    specs = []
    for number, diagnosis in enumerate(diagnoses, start=1):
        subject_seed = _child(root, number)
        rng = np.random.default_rng(_child(subject_seed, 0))
        age = int(rng.integers(AGE_RANGE[0], AGE_RANGE[1] + 1))
        sex = str(rng.choice(["F", "M"]))
        draw = float(rng.uniform(*SEVERITY_RANGE))
        severity = 0.0 if null or diagnosis == "CN" else draw * (MCI_FRACTION if diagnosis == "MCI" else 1.0)
        specs.append(SubjectSpec(f"{number:0{width}d}", str(diagnosis), age, sex, severity, float(effect_size),
                                 subject_seed, sessions))
    return specs


def _atrophy_gain(truth: GroundTruth, shift: float, loss: float) -> float:
    """Gain ``g`` for which the atrophied template loses exactly ``loss`` of its mean intensity in ``R``.

    Raises
    ------
    ValueError
        If the deformation alone already removes more than ``loss`` (no
        non-negative gain exists).
    """
    region = truth.region
    points = truth.grid_points()[:, region] + shift * truth.push[:, region]
    deformed = ndimage.map_coordinates(truth.intensity, truth.to_index(points), order=1)
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


def subject_anatomy(truth: GroundTruth, spec: SubjectSpec) -> SubjectAnatomy:
    """Draw a subject's displacement field and head scaling, and calibrate its atrophy.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    """
    rng = np.random.default_rng(_child(spec.seed, 1))
    noise = rng.standard_normal((3, *truth.anatomy_shape))
    field = np.stack([ndimage.gaussian_filter(c, ANATOMY_SIGMA_MM / ANATOMY_GRID_MM) for c in noise])
    field *= ANATOMY_SD_MM / field.std(axis=(1, 2, 3), keepdims=True)
    scaling = 1.0 + rng.uniform(-SCALING_RANGE, SCALING_RANGE, 3)
    loss = spec.intensity_loss
    shift = SHIFT_MM_PER_EFFECT * loss
    gain = _atrophy_gain(truth, shift, loss) if loss > 0 else 0.0
    return SubjectAnatomy(field.astype(np.float32), scaling, shift, gain)


def to_template(truth: GroundTruth, anatomy: SubjectAnatomy, points: np.ndarray,
                individual: bool = True) -> tuple[np.ndarray, np.ndarray | float]:
    """Map points of a subject's anatomical space to the template, through its true warp.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    anatomy : SubjectAnatomy
        The subject.
    points : numpy.ndarray
        World coordinates (mm), shape ``(3, ...)``, in the subject's
        anatomical space (template-aligned, before pose).
    individual : bool
        Apply the individual displacement ``d_s``; False gives the atrophied
        template ``T_s`` of the module docstring.

    Returns
    -------
    y : numpy.ndarray
        Template world coordinates, same shape as ``points``.
    factor : numpy.ndarray or float
        Intensity factor ``exp(-g_s w)`` at the points (1.0 without atrophy).
    """
    if individual:
        coarse = (points - truth.anatomy_origin.reshape((3,) + (1,) * (points.ndim - 1))) / ANATOMY_GRID_MM
        points = points + np.stack([ndimage.map_coordinates(c, coarse, order=1, mode="nearest")
                                    for c in anatomy.displacement])
    if anatomy.shift == 0:
        return points, 1.0
    index = truth.to_index(points)
    weight = ndimage.map_coordinates(truth.probseg, index, order=1)
    push = np.stack([ndimage.map_coordinates(c, index, order=1) for c in truth.push])
    return points + anatomy.shift * push, np.exp(-anatomy.gain * weight)


def template_space_image(truth: GroundTruth, spec: SubjectSpec, individual: bool = True) -> np.ndarray:
    """A subject's image on the template grid, before pose, bias and noise.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    individual : bool
        Include the individual displacement ``d_s`` (``A_s``). False gives the
        atrophied template ``T_s``, on which the effect size is defined: its
        mean inside ``truth.region`` is ``1 - spec.intensity_loss`` times the
        template's.

    Returns
    -------
    numpy.ndarray
        float32 array on the template grid, in the units of ``truth.intensity``.
    """
    anatomy = subject_anatomy(truth, spec)
    y, factor = to_template(truth, anatomy, truth.grid_points(), individual)
    return (ndimage.map_coordinates(truth.intensity, truth.to_index(y), order=1) * factor).astype(np.float32)


def relevance_ratio(maps: np.ndarray, region: np.ndarray, brain: np.ndarray) -> float:
    """How strongly heatmaps point at a planted region: relevance per voxel inside it over that in the rest.

    Each map's absolute values inside ``brain`` are scaled to unit total (an
    all-zero map stays zero), averaged over maps, and the mean per voxel inside
    ``region`` is divided by the mean per voxel in the rest of ``brain``: 1 means
    no preference.

    Parameters
    ----------
    maps : numpy.ndarray
        Heatmaps ``(N, X, Y, Z)`` on the template grid.
    region, brain : numpy.ndarray
        Boolean masks of the planted region and the brain on that grid.
    """
    absolute = np.abs(maps) * brain
    total = absolute.sum(axis=(1, 2, 3), keepdims=True)
    mean = (absolute / np.where(total > 0, total, 1)).mean(axis=0)
    return float(mean[region & brain].mean() / mean[~region & brain].mean())


def write_template_space_derivatives(derivs: Derivatives, truth: GroundTruth, specs: Sequence[SubjectSpec],
                                     intensity_norm: str = "whitematter", noise: float = 0.02,
                                     seed: int = 0) -> list[T1wInput]:
    """Write each simulated scan's template-space image where the participant level writes its output.

    The "oracle" preprocessing: instead of simulating a native scan and
    registering it, each session's image is the subject's template-space image
    (:func:`template_space_image`: individual anatomy and planted atrophy) plus
    Gaussian noise of SD ``noise`` (intensity units of ``truth.intensity``),
    normalised by ``--intensity-norm`` inside the template brain mask, and
    written with that mask as ``desc-preproc_T1w`` / ``desc-brain_mask``.
    Training, heatmap and evaluation benchmarks and tests start from here in
    seconds. The raw dataset (``derivs.bids_dir``) must come from
    :func:`simulate_cohort` with the same ``specs``.

    Returns
    -------
    list of T1wInput
        The raw inputs the written images stand for, in the order of ``specs``.
    """
    from adheat_app.layout import preproc_paths
    from adheat_app.preprocess.intensity import normalise

    template = truth.template
    mask = template.mask_array().astype(bool)
    template_data = np.asarray(template.t1w.dataobj, dtype=np.float32)
    rng = np.random.default_rng(seed)
    inputs = []
    for spec in specs:
        image = template_space_image(truth, spec)
        for session in range(spec.sessions):
            ses = spec.session_label(session)
            folder = derivs.bids_dir / spec.participant_id / (f"ses-{ses}" if ses else "") / "anat"
            name = spec.participant_id + (f"_ses-{ses}" if ses else "") + "_T1w.nii.gz"
            t1w = T1wInput(spec.label, ses, folder / name)
            noisy = image + rng.normal(0, noise, image.shape).astype(np.float32)
            data = normalise(noisy, mask, intensity_norm, template_data, mask)
            img_path, mask_path = preproc_paths(derivs.root, t1w, template.space, template.res_label)
            sources = [derivs.source_uri(t1w.path)]
            derivs.write_image(img_path, _nifti(data, template.affine, 4),
                               {"Sources": sources, "SkullStripped": True, "IntensityNormalization": intensity_norm,
                                "Description": "simulated template-space image (no registration)"})
            derivs.write_image(mask_path, _nifti(mask.astype(np.uint8), template.affine, 4),
                               {"Sources": sources, "Type": "Brain"})
            inputs.append(t1w)
    return inputs


def _native_grid(truth: GroundTruth, anatomy: SubjectAnatomy, rng: np.random.Generator
                 ) -> tuple[str, tuple[int, int, int], np.ndarray, np.ndarray]:
    """Draw a scan's orientation, voxel size, pose and field of view.

    Returns
    -------
    orientation : str
        Axis codes of the native grid.
    shape, affine
        The native grid (voxel to scanner mm).
    to_anatomy : numpy.ndarray
        4x4 map from scanner mm to the subject's anatomical (template-aligned) mm.
    """
    orientation = ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))]
    zooms = truth.template.resolution * (1.0 + rng.uniform(-VOXEL_JITTER, VOXEL_JITTER, 3))
    rotation = Rotation.from_euler("xyz", rng.uniform(-ROTATION_DEG, ROTATION_DEG, 3), degrees=True).as_matrix()
    translation = rng.uniform(-TRANSLATION_MM, TRANSLATION_MM, 3)
    margins = rng.uniform(*FOV_MARGIN_MM, (2, 3))
    to_scanner = np.eye(4)
    to_scanner[:3, :3] = rotation @ np.diag(anatomy.scaling)
    to_scanner[:3, 3] = translation - to_scanner[:3, :3] @ truth.brain_points.mean(axis=1)
    brain = to_scanner[:3, :3] @ truth.brain_points + to_scanner[:3, 3:]
    low, high = brain.min(axis=1) - margins[0], brain.max(axis=1) + margins[1]
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    shape = []
    for axis, (world, flip) in enumerate(nib.orientations.axcodes2ornt(orientation)):
        world = int(world)
        affine[world, axis] = flip * zooms[axis]
        affine[world, 3] = low[world] if flip > 0 else high[world]
        shape.append(int(math.ceil((high[world] - low[world]) / zooms[axis])) + 1)
    return orientation, tuple(shape), affine, np.linalg.inv(to_scanner)


def _bias_field(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic polynomial of the voxel position."""
    u = [np.linspace(-1.0, 1.0, n).reshape([-1 if a == axis else 1 for a in range(3)])
         for axis, n in enumerate(shape)]
    terms = [u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]]
    coefficients = rng.normal(0.0, BIAS_SD, len(terms))
    return np.exp(sum(c * t for c, t in zip(coefficients, terms)))


def simulate_scan(truth: GroundTruth, spec: SubjectSpec, anatomy: SubjectAnatomy, session: int) -> NativeScan:
    """Simulate one session of a subject on a native scanner grid.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    anatomy : SubjectAnatomy
        The subject's anatomy (:func:`subject_anatomy`), shared by its sessions.
    session : int
        0-based session index; each session has its own pose, grid, bias and noise.
    """
    rng = np.random.default_rng(_child(spec.seed, 2 + session))
    orientation, shape, affine, to_anatomy = _native_grid(truth, anatomy, rng)
    bias = _bias_field(shape, rng)
    scale = float(np.exp(rng.uniform(*np.log(INTENSITY_SCALE))))
    noise_sd = float(rng.uniform(*NOISE_FRACTION)) * scale
    as_int16 = bool(rng.random() < 0.5)
    points = _affine_points(to_anatomy @ affine, shape)
    # Only points within reach of the brain can land on it: warp those, leave the rest 0.
    reach = anatomy.max_displacement + truth.template.resolution * math.sqrt(3)
    near = ndimage.map_coordinates(truth.distance, truth.to_index(points), order=0, cval=np.inf) <= reach
    y, factor = to_template(truth, anatomy, points[:, near])
    index = truth.to_index(y)
    clean = np.zeros(shape)
    clean[near] = ndimage.map_coordinates(truth.intensity, index, order=1) * factor
    labels = np.zeros(shape, dtype=truth.labels.dtype)
    labels[near] = ndimage.map_coordinates(truth.labels, index, order=0)
    signal = scale * bias * clean
    noise = rng.standard_normal((2, *shape)) * noise_sd
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    data = np.rint(magnitude).clip(0, np.iinfo(np.int16).max).astype(np.int16) if as_int16 \
        else magnitude.astype(np.float32)
    masks = [np.isin(labels, values).astype(np.uint8) for values in (truth.region_values, truth.hippocampus_values)]
    return NativeScan(_nifti(data, affine, 1), _nifti(masks[0], affine, 1), _nifti(masks[1], affine, 1),
                      orientation)


def _generated_by() -> dict:
    return {"Name": "adheat-simulate", "Version": __version__,
            "Description": "Simulated T1w cohort with planted atrophy (adheat_app.simulate)"}


def write_subject(truth: GroundTruth, spec: SubjectSpec, out_dir: Path) -> None:
    """Simulate every session of one subject and write its scans and truth masks.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    out_dir : Path
        Root of the raw dataset; the truth goes to ``derivatives/simulation``.
    """
    anatomy = subject_anatomy(truth, spec)
    raw = Derivatives(out_dir, out_dir)  # used for BIDS path naming only
    truth_dir = Derivatives(out_dir / "derivatives" / "simulation", out_dir)
    for session in range(spec.sessions):
        scan = simulate_scan(truth, spec, anatomy, session)
        ses = spec.session_label(session)
        t1w = raw.subject_path(spec.label, ses, "T1w")
        save_nifti(t1w, scan.t1w)
        write_json(sidecar_path(t1w), {"SkullStripped": True})
        source = f"bids:raw:{t1w.relative_to(out_dir).as_posix()}"
        atrophy = truth_dir.subject_path(spec.label, ses, "mask", desc="atrophy")
        truth_dir.write_image(atrophy, scan.atrophy_mask, {
            "Description": "Planted atrophy region (AAL3 regions matching Regions) mapped through this scan's "
                           "true warp onto the T1w grid (nearest neighbour).",
            "Type": "ROI", "Sources": [source], "Atlas": "AAL3", "Regions": list(truth.regions),
            "AtlasRegions": truth.region_names, "Diagnosis": spec.diagnosis, "Severity": spec.severity, "IntensityLoss": spec.intensity_loss,
            "Carried": spec.intensity_loss > 0, "ShiftMM": anatomy.shift, "IntensityGain": anatomy.gain,
            "Orientation": scan.orientation,
        })
        hippocampus = truth_dir.subject_path(spec.label, ses, "mask", desc="hippocampus")
        truth_dir.write_image(hippocampus, scan.hippocampus_mask, {
            "Description": "AAL3 hippocampus (left and right) mapped through this scan's true warp onto the T1w "
                           "grid (nearest neighbour).",
            "Type": "ROI", "Sources": [source], "Atlas": "AAL3",
            "AtlasRegions": truth.hippocampus_names,
        })


_WORKER_TRUTH: GroundTruth | None = None


def _init_worker(truth: GroundTruth) -> None:
    global _WORKER_TRUTH
    _WORKER_TRUTH = truth


def _write_subject_in_worker(spec: SubjectSpec, out_dir: Path) -> None:
    write_subject(_WORKER_TRUTH, spec, out_dir)


def _check_arguments(out_dir: Path, n_subjects: int, resolution: float, effect_size: float,
                     regions: Sequence[str], sessions: int, n_mci: int, nprocs: int) -> None:
    """Reject argument values that cannot work, naming the option."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    if n_subjects < 2:
        raise InputError(f"--n-subjects {n_subjects}: need at least 2 (one AD, one CN)")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InputError(f"--resolution {resolution}: use a voxel size between {MIN_RESOLUTION:g} and "
                         f"{MAX_RESOLUTION:g} mm")
    if not 0 <= effect_size <= MAX_EFFECT_SIZE:
        raise InputError(f"--effect-size {effect_size}: use a value between 0 and {MAX_EFFECT_SIZE}")
    if not regions:
        raise InputError("--regions: name at least one AAL3 region pattern")
    if sessions < 1 or n_mci < 0 or nprocs < 0:
        raise InputError("--sessions must be at least 1, --n-mci and --nprocs must not be negative")


def _write_dataset_files(out_dir: Path, truth: GroundTruth, specs: list[SubjectSpec], parameters: dict) -> None:
    """Write the dataset-level files: truth map, tables, README and both descriptions (raw last)."""
    template = truth.template
    truth_root = out_dir / "derivatives" / "simulation"
    name = f"space-{template.space}_res-{template.res_label}_desc-atrophy_probseg.nii.gz"
    Derivatives(truth_root, out_dir).write_image(truth_root / name, _nifti(truth.probseg, template.affine, 4), {
        "Description": "Planted atrophy region: the AAL3 regions matching Regions, smoothed by a Gaussian "
                       f"(sigma {REGION_SIGMA_MM} mm), 0..1. Where it is 1 an AD subject of severity 1 loses about "
                       "EffectSize / mean(map inside the regions) of its intensity.",
        "Space": template.space, "Resolution": template.res_description, "Atlas": "AAL3",
        "Regions": list(truth.regions), "AtlasRegions": truth.region_names, "SmoothingSigmaMM": REGION_SIGMA_MM,
        "EffectSize": parameters["effect_size"], "Null": parameters["null"],
        "CarriedBy": [s.participant_id for s in specs if s.intensity_loss > 0],
    })
    truth_table = pd.DataFrame({
        "participant_id": [s.participant_id for s in specs], "diagnosis": [s.diagnosis for s in specs],
        "severity": [round(s.severity, 6) for s in specs],
        "intensity_loss": [round(s.intensity_loss, 6) for s in specs]})
    write_tsv(truth_root / "participants.tsv", truth_table)
    write_json(truth_root / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis (as in the raw participants.tsv)."},
        "severity": {"Description": "Atrophy severity sigma_s: U(0.5, 1.5) for AD, half such a draw for MCI, "
                                    "0 for CN and in null cohorts."},
        "intensity_loss": {"Description": "Planted fractional loss of mean intensity inside the region, in "
                                          "template space before anatomy, pose and noise (severity x effect size)."},
    })
    write_json(truth_root / "dataset_description.json", {
        "Name": "adheat-simulate ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [_generated_by()], "DatasetLinks": {"raw": "../.."}, "Simulation": parameters,
    })
    table = pd.DataFrame({
        "participant_id": [s.participant_id for s in specs], "diagnosis": [s.diagnosis for s in specs],
        "age": [s.age for s in specs], "sex": [s.sex for s in specs]})
    write_tsv(out_dir / "participants.tsv", table)
    write_json(out_dir / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis", "Levels": {
            "AD": "Alzheimer's disease (planted atrophy)", "CN": "cognitively normal control",
            "MCI": "mild cognitive impairment (half the AD atrophy)"}},
        "age": {"Description": "Age at scan (simulated, same distribution in every group)", "Units": "year"},
        "sex": {"Description": "Sex (simulated)", "Levels": {"F": "female", "M": "male"}},
    })
    write_text(out_dir / "README", (
        "Simulated T1w cohort made by adheat-simulate (adheat_app.simulate).\n\n"
        f"Every scan is the skull-stripped {template.space} template at {template.resolution:g} mm, deformed by a "
        "smooth random displacement, posed in a scanner with its own voxel size, orientation, bias field and "
        "Rician noise. AD subjects (and MCI at half severity) carry atrophy in the AAL3 regions "
        f"{', '.join(truth.regions)}" + (" (not in this null cohort: nobody carries it)" if parameters["null"]
                                          else "") + ".\n\n"
        "The truth is in derivatives/simulation: the planted region in template space, per scan the region and "
        "the hippocampus on the scan's grid, and every simulation parameter in its dataset_description.json.\n"
        "No real person's data are included.\n"))
    write_json(out_dir / "dataset_description.json", {
        "Name": "adheat-simulate cohort", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
        "GeneratedBy": [_generated_by()],
    })


def simulate_cohort(out_dir: str | os.PathLike, n_subjects: int = 40, resolution: float = 2.0, seed: int = 0,
                    effect_size: float = 0.3, regions: Sequence[str] = DEFAULT_REGIONS, sessions: int = 1,
                    null: bool = False, n_mci: int = 0, nprocs: int = 1) -> Path:
    """Write a simulated BIDS cohort with planted atrophy, and its ground truth.

    Parameters
    ----------
    out_dir : path-like
        New (or empty) folder for the raw BIDS dataset.
    n_subjects : int
        AD plus CN subjects (balanced: AD get ``ceil(n / 2)``).
    resolution : float
        Analysis-grid voxel size in mm; native voxels are this +- 10 %.
    seed : int
        Root seed; the same seed gives byte-identical files.
    effect_size : float
        Expected fractional loss of mean intensity inside the planted region in
        AD (defined exactly in the module docstring), 0 to 0.5.
    regions : sequence of str
        AAL3 name patterns of the planted region.
    sessions : int
        Sessions per subject (same anatomy, new pose, grid, bias and noise).
    null : bool
        Plant no atrophy at all (diagnoses stay balanced but carry no signal).
    n_mci : int
        Extra MCI subjects with half the AD severity.
    nprocs : int
        Subjects simulated in parallel (0: every CPU). Does not change the output.

    Returns
    -------
    Path
        The dataset root.

    Raises
    ------
    InputError
        For argument values that cannot work.
    """
    out = Path(out_dir).absolute()
    regions = tuple(regions)
    _check_arguments(out, n_subjects, resolution, effect_size, regions, sessions, n_mci, nprocs)
    truth = build_ground_truth(resolution, regions)
    specs = plan_cohort(n_subjects, seed=seed, effect_size=effect_size, null=null, n_mci=n_mci, sessions=sessions)
    workers = min(nprocs or os.cpu_count() or 1, len(specs))
    LOGGER.info("Simulating %d subject(s) x %d session(s) at %g mm in %s (%d process(es))",
                len(specs), sessions, resolution, out, workers)
    if workers == 1:
        for spec in specs:
            write_subject(truth, spec, out)
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(truth,)) as pool:
            for future in [pool.submit(_write_subject_in_worker, spec, out) for spec in specs]:
                future.result()
    parameters = {
        "seed": seed, "effect_size": effect_size, "regions": list(regions), "null": null,
        "space": truth.template.space, "resolution": truth.template.resolution,
        "res_label": truth.template.res_label, "template_source": truth.template.source,
        "n_subjects": n_subjects, "n_mci": n_mci, "sessions": sessions,
        "model": {
            "region_sigma_mm": REGION_SIGMA_MM, "shift_mm_per_effect": SHIFT_MM_PER_EFFECT,
            "severity_range": list(SEVERITY_RANGE), "mci_fraction": MCI_FRACTION,
            "anatomy_sd_mm": ANATOMY_SD_MM, "anatomy_sigma_mm": ANATOMY_SIGMA_MM,
            "scaling_range": SCALING_RANGE, "rotation_deg": ROTATION_DEG, "translation_mm": TRANSLATION_MM,
            "voxel_jitter": VOXEL_JITTER, "fov_margin_mm": list(FOV_MARGIN_MM), "bias_sd": BIAS_SD,
            "intensity_scale": list(INTENSITY_SCALE), "noise_fraction": list(NOISE_FRACTION),
            "orientations": list(ORIENTATIONS), "age_range": list(AGE_RANGE),
        },
    }
    _write_dataset_files(out, truth, specs, parameters)
    return out


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are :class:`InputError` (one line, exit 2), not a usage dump."""

    def error(self, message: str):
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    """The ``adheat-simulate`` command-line parser."""
    parser = _Parser(
        prog="adheat-simulate",
        description="Write a simulated BIDS cohort (AD, CN, optional MCI) with atrophy planted in AAL3 regions, "
                    "and its ground truth under OUT/derivatives/simulation.")
    parser.add_argument("out_dir", metavar="OUT", type=Path, help="New or empty output folder.")
    parser.add_argument("--n-subjects", type=int, default=40, help="AD plus CN subjects (default: %(default)s).")
    parser.add_argument("--resolution", type=float, default=2.0,
                        help="Analysis-grid voxel size in mm (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    parser.add_argument("--effect-size", type=float, default=0.3,
                        help="Expected fractional intensity loss inside the regions in AD, 0 to "
                             f"{MAX_EFFECT_SIZE} (default: %(default)s).")
    parser.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS), metavar="PATTERN",
                        help="AAL3 region name patterns of the planted atrophy (default: %(default)s).")
    parser.add_argument("--sessions", type=int, default=1, help="Sessions per subject (default: %(default)s).")
    parser.add_argument("--null", action="store_true", help="Plant no atrophy (labels carry no signal).")
    parser.add_argument("--n-mci", type=int, default=0, help="Extra MCI subjects at half severity.")
    parser.add_argument("--nprocs", type=int, default=1,
                        help="Subjects simulated in parallel; 0 = every CPU (default: %(default)s).")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log progress.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``adheat-simulate``; return the exit code (0 done, 2 bad arguments)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # after --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except InputError as exc:
        print(f"adheat-simulate: error: {exc} (see adheat-simulate --help)", file=sys.stderr)
        return EXIT_USAGE
    # A handler for this call only (not logging.basicConfig, which would outlive it on the root logger and
    # keep writing to whatever sys.stderr was at the first call).
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("adheat_app")
    previous_level = package_logger.level
    package_logger.addHandler(handler)
    package_logger.setLevel(min(handler.level, previous_level or logging.WARNING))
    try:
        out = simulate_cohort(args.out_dir, n_subjects=args.n_subjects, resolution=args.resolution,
                              seed=args.seed, effect_size=args.effect_size, regions=args.regions,
                              sessions=args.sessions, null=args.null, n_mci=args.n_mci, nprocs=args.nprocs)
    except InputError as exc:
        print(f"adheat-simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
    print(out)
    return EXIT_OK
