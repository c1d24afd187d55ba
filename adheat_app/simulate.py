"""Simulated BIDS cohort with known, planted atrophy: the ground truth of adheat.

This module owns the ``adheat-simulate`` command and everything it writes: a raw
BIDS dataset of skull-stripped T1w scans of Alzheimer's disease (AD), control
(CN) and optionally MCI subjects made from the analysis template, with atrophy
planted in named AAL3 regions, and a ``derivatives/simulation`` dataset holding
the truth: the planted region in template space; per subject the template-space
log-Jacobian of the planted change and the volume it removed; per scan the
planted region, the hippocampus and the tissue classes mapped through the
scan's true warp onto its native grid (so registration accuracy can be
measured). The demo and the tests of preprocessing, training and heatmaps are
built on it. ``docs/simulation.md`` relates every parameter to the literature.

Generative model
----------------
Coordinates are world millimetres; displacement fields live on the template
grid in voxel units (:mod:`adheat_app.deformation`).

0. Tissue: the template T1w ``T`` (scaled so its 99th brain percentile is 1)
   is unmixed into partial-volume fractions of CSF, GM and WM: ``mu`` are the
   means of a 3-class Gaussian mixture of ``T`` inside the brain, and a voxel of
   intensity between two neighbouring class means is a linear mix of the two.
   An image is synthesised from fractions as ``sum_c f_c mu_c``, so the
   template itself is reproduced (within ``[mu_CSF, mu_WM]``).
1. Planted atrophy (severity ``sigma_s``, effect size ``e``, planted loss
   ``l_s = sigma_s e``), on the template grid. ``R`` is the union of the AAL3
   regions matching ``regions``, ``w = G_3mm * 1_R`` (the ``probseg`` map).

   * ``tissue-loss`` (default): a flow ``v = A grad(u)`` whose divergence is
     ``-(f_GM + f_WM) 1_R`` (the tissue of ``R``: the grey matter of its AAL
     labels and the partial-volume white matter inside them, loses volume)
     plus a positive source of equal total in the CSF and the space just
     outside the brain near ``R`` (weight ``exp(-d^2 / 2 (8 mm)^2)``, ``d``
     the distance to ``R``: sulci widen, the temporal horn grows); ``A`` is solved so
     that ``R`` loses exactly ``l_s`` of its volume: ``mean_R det(I + Dv) =
     1 - l_s`` (averaged over each voxel cube of the trilinear field). The
     template-to-subject map is ``y -> y + v(y)``; its log-Jacobian (log
     volume ratio of every voxel cube) is the truth. GM and WM fractions are
     carried by the inverse map; whatever the tissue leaves inside the brain
     envelope (which does not move) is CSF, and intensities keep their class
     values, so the change is morphometric.
   * ``darkening`` (the earlier model): ``T_s(y) = T(y + c_s p(y)) exp(-g_s
     w(y))`` with ``p = -grad(w) / max|grad(w)|``, ``c_s = 3 mm l_s`` and the
     gain ``g_s`` solved so that the mean intensity in ``R`` falls by exactly
     ``l_s``.
2. Age and individual anatomy: grey matter shrinks by 0.5 % per year of age
   above 73 (below: grows) everywhere, the volume going to the CSF in
   proportion to its fraction (ventricles and sulci widen with age); the
   ventricles (CSF deeper than 15 mm) are scaled by a log-normal factor (SD
   0.3) at the expense of all tissue; then ``d_s``: Gaussian-smoothed white
   noise of 1.5 mm SD (sigma 12 mm) plus a folding field of 0.7 mm SD (sigma
   4 mm).
3. Native scan: the head sits in the scanner at ``q = Rot (S (x - c)) + t``
   (``c`` the brain centroid, rotations up to 10 degrees, translations up to
   10 mm, ``S`` the head size: 0.98 (F) or 1.02 (M) with SD 0.03, times 1 +- 3 %
   per axis). The scan's site sets its voxel size (``resolution * scale * (1 +-
   10 %)`` per axis), GM/CSF-to-WM contrast, bias strength and noise level;
   each scan draws one of :data:`ORIENTATIONS`, a field of view 10-25 mm larger
   than the brain on each side, a bias ``b = exp(quadratic polynomial)``, a
   global scale ``k`` in [300, 3000] and Rician noise of (0.5-1.5) x the site's
   noise fraction of ``k``, stored as int16 or float32 (half each).

The warps are composed as coordinate maps and each map is interpolated once per
image (trilinear; labels by nearest neighbour): native voxel ``v`` -> ``x``
(inverse pose) -> ``x + d_s(x)`` -> inverse age/ventricle flow (to first
order: minus the flow) -> inverse planted flow (solved by Newton iterations at
every point; darkening's warp is defined in that direction) -> template
fractions and labels.

Cohort
------
AD get ``ceil(n / 2)`` of ``n_subjects``, CN the rest, plus ``n_mci`` MCI.
Ages are normal, AD 75 +- 8, CN 73 +- 6, MCI 74 +- 7 years (clipped to
55-95), sexes equally likely. ``sigma_s ~ U(0.5, 1.5)`` for AD, half such a
draw for MCI, 0 for CN and for everybody in a ``null`` cohort (whose
diagnoses, ages and sites stay as they would be). With ``sites`` > 1, a share
``site_imbalance`` of the AD subjects is scanned at site 0 (default: 1 /
``sites``, balanced), CN at site 0 get the share ``(1 - site_imbalance) /
(sites - 1)``, everybody else is spread evenly over the other sites; site 0 is
the reference scanner.

Reproducibility
---------------
``numpy.random.SeedSequence(seed)`` has child 0 for cohort-wide draws (the
order of diagnoses; its children 0 and 1 the site parameters and site
assignment) and child ``i`` for the ``i``-th subject, which in turn has child 0
for demographics and severity, 1 for anatomy and ``2 + k`` for session ``k``.
Results therefore do not depend on ``nprocs``, and a subject keeps its anatomy
and scans when the cohort gains sessions or is made ``null``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation
from sklearn.mixture import GaussianMixture

from adheat_app import __version__
from adheat_app.bids import Derivatives, T1wInput, sidecar_path
from adheat_app.deformation import (
    cell_jacobian,
    determinant,
    invert_displacement,
    potential_flow,
    sample_field,
    solve_preimage,
    sub_voxel_gradients,
)
from adheat_app.errors import EXIT_OK, EXIT_USAGE, InputError
from adheat_app.io import save_nifti, write_json, write_text, write_tsv
from adheat_app.layout import simulation_truth_path
from adheat_app.templates import DEFAULT_SPACE, Template, get_atlas, get_template

LOGGER = logging.getLogger(__name__)

#: AAL3 name patterns of the default planted region: medial and inferior temporal lobe.
DEFAULT_REGIONS: tuple[str, ...] = ("Hippocampus", "Amygdala", "ParaHippocampal", "Temporal_Inf")
#: Stored orientations of the native scans (NIfTI axis codes), drawn per scan.
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS", "LIA", "PIL", "ASR")
#: Atrophy models: the first is the default.
ATROPHY_MODELS: tuple[str, ...] = ("tissue-loss", "darkening")
#: Default effect size of each atrophy model (expected fractional volume / intensity loss of the region in AD).
DEFAULT_EFFECT_SIZE = {"tissue-loss": 0.3, "darkening": 0.3}
#: Largest effect size accepted per model (the most severe subject, severity 1.5, loses 1.5 times it).
MAX_EFFECT_SIZE = {"tissue-loss": 0.35, "darkening": 0.5}
#: Analysis-grid voxel sizes accepted (mm).
MIN_RESOLUTION, MAX_RESOLUTION = 0.5, 8.0
#: Tissue classes of the fraction maps, in order (label values 1, 2, 3 of the native tissue truth).
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")

BIDS_VERSION = "1.10.0"
REGION_SIGMA_MM = 3.0
COMPENSATION_SIGMA_MM = 8.0
SHIFT_MM_PER_EFFECT = 3.0
SEVERITY_RANGE = (0.5, 1.5)
MCI_FRACTION = 0.5
AGE_DISTRIBUTION = {"AD": (75.0, 8.0), "CN": (73.0, 6.0), "MCI": (74.0, 7.0)}
AGE_LIMITS = (55, 95)
AGE_REFERENCE = 73.0
GM_LOSS_PER_YEAR = 0.005
VENTRICLE_DEPTH_MM = 15.0
VENTRICLE_LOG_SD = 0.3
HEAD_SCALE = {"F": 0.98, "M": 1.02}
HEAD_SCALE_SD = 0.03
ANISOTROPY = 0.03
ANATOMY_SD_MM = 1.5
ANATOMY_SIGMA_MM = 12.0
FOLDING_SD_MM = 0.7
FOLDING_SIGMA_MM = 4.0
ANATOMY_GRID_MM = 4.0
ANATOMY_MARGIN_MM = 48.0
FLOW_PAD_MM = 32.0
ROTATION_DEG = 10.0
TRANSLATION_MM = 10.0
VOXEL_JITTER = 0.10
FOV_MARGIN_MM = (10.0, 25.0)
INTENSITY_SCALE = (300.0, 3000.0)
NOISE_SPREAD = (0.5, 1.5)
#: Ranges from which sites other than site 0 draw their departures from the reference scanner.
SITE_VOXEL_CHANGE = (0.10, 0.25)
SITE_CONTRAST_CHANGE = (0.10, 0.25)
SITE_NOISE_LOG_CHANGE = (0.3, 0.7)
SITE_BIAS_SD = (0.04, 0.16)


@dataclasses.dataclass(frozen=True)
class Site:
    """A scanner: what every scan acquired there shares.

    Attributes
    ----------
    index : int
        Site number (0 is the reference scanner).
    voxel_scale : float
        Native voxel size relative to the analysis resolution (before the
        per-scan jitter of +- 10 %).
    contrast : float
        Scale of the GM and CSF intensity departures from WM (1: the
        template's contrast).
    noise : float
        Typical Rician noise SD as a fraction of the scan's intensity scale
        (each scan draws 0.5-1.5 times it).
    bias_sd : float
        SD of the coefficients of the quadratic log-bias polynomial.
    """

    index: int
    voxel_scale: float = 1.0
    contrast: float = 1.0
    noise: float = 0.02
    bias_sd: float = 0.08

    def class_means(self, reference: np.ndarray) -> np.ndarray:
        """CSF, GM and WM intensities at this site from the template's ``reference`` means."""
        return reference[2] - self.contrast * (reference[2] - reference)


#: Descriptions of the columns of ``derivatives/simulation/sites.tsv`` (besides ``site`` and group counts).
SITE_COLUMNS = {
    "voxel_scale": "Native voxel size / analysis resolution (each scan +- 10 % per axis).",
    "contrast": "Scale of the GM and CSF intensity departures from WM (1: template).",
    "noise": "Rician noise SD / intensity scale (each scan 0.5-1.5 times it).",
    "bias_sd": "SD of the coefficients of the quadratic log-bias polynomial.",
}
#: The reference scanner (site 0 of every cohort).
REFERENCE_SITE = Site(0)


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
    """Template-space truth shared by every subject of a cohort.

    Attributes
    ----------
    template : Template
        The analysis template the subjects are made from.
    regions : tuple of str
        AAL3 name patterns of the planted region.
    intensity : numpy.ndarray
        The template synthesised from its tissue fractions (``sum_c f_c mu_c``),
        in units where the template's 99th brain percentile is 1 (float32).
    fractions : numpy.ndarray
        CSF, GM and WM partial-volume fractions, shape ``(3, *grid)``, 0 outside
        the brain (float32).
    class_means : numpy.ndarray
        CSF, GM and WM intensities ``mu`` (3-class Gaussian mixture).
    envelope : numpy.ndarray
        The template brain mask as float32 (the envelope tissue cannot leave).
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
        in voxel axes (float32; the darkening model's inward warp).
    atrophy_flow, age_flow, ventricle_flow : numpy.ndarray
        Unit displacements (voxels, ``(3, *grid)``, float32) of the planted
        tissue loss, of one unit of age-related GM loss and of one unit of
        log ventricle scaling (see the module docstring).
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
    fractions: np.ndarray
    class_means: np.ndarray
    envelope: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    region_values: tuple[int, ...]
    hippocampus_values: tuple[int, ...]
    probseg: np.ndarray
    push: np.ndarray
    atrophy_flow: np.ndarray
    age_flow: np.ndarray
    ventricle_flow: np.ndarray
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

    @property
    def voxel_ml(self) -> float:
        """Volume of one template voxel in ml."""
        return self.template.resolution**3 / 1000.0

    def grid_points(self) -> np.ndarray:
        """World coordinates (mm) of every template voxel, shape ``(3, *grid)``."""
        return _affine_points(self.template.affine, self.template.shape)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Template voxel coordinates of world ``points`` (first axis: x, y, z)."""
        inverse = np.linalg.inv(self.template.affine)
        return np.einsum("ij,j...->i...", inverse[:3, :3], points) + inverse[:3, 3].reshape(
            (3,) + (1,) * (points.ndim - 1))


@dataclasses.dataclass(frozen=True)
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
    head_scale : float
        Linear head size relative to the template.
    ventricle_scale : float
        Ventricle volume factor of the individual anatomy (before age).
    site : Site
        The scanner of all the subject's sessions.
    severity : float
        Atrophy severity ``sigma_s`` applied (0: no atrophy).
    effect_size : float
        The cohort's effect size ``e``.
    atrophy_model : {"tissue-loss", "darkening"}
        How the atrophy is planted.
    seed : numpy.random.SeedSequence
        The subject's own seed.
    sessions : int
        Number of sessions.
    """

    label: str
    diagnosis: str
    age: int
    sex: str
    head_scale: float
    ventricle_scale: float
    site: Site
    severity: float
    effect_size: float
    atrophy_model: str
    seed: np.random.SeedSequence
    sessions: int

    @property
    def participant_id(self) -> str:
        """``sub-<label>``."""
        return f"sub-{self.label}"

    @property
    def planted_loss(self) -> float:
        """Planted loss ``l_s = sigma_s * e``: fraction of the region's volume (tissue-loss) or mean intensity."""
        return self.severity * self.effect_size

    def session_label(self, session: int) -> str | None:
        """BIDS session label of the 0-based ``session`` (None for single-session cohorts)."""
        return f"{session + 1:02d}" if self.sessions > 1 else None


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
        Template-space log-Jacobian of the planted deformation (float32); None without atrophy.
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


@dataclasses.dataclass(frozen=True, eq=False)
class NativeScan:
    """One simulated scan on its native grid.

    Attributes
    ----------
    t1w : nibabel.Nifti1Image
        The T1w scan (int16 or float32).
    atrophy_mask, hippocampus_mask : nibabel.Nifti1Image
        The planted region and the AAL3 hippocampus through the true warp
        (uint8, same grid and affine as ``t1w``).
    tissue : nibabel.Nifti1Image
        Tissue class of largest fraction (0 background, 1 CSF, 2 GM, 3 WM; uint8).
    orientation : str
        Axis codes of the stored orientation (``"LIA"``).
    """

    t1w: nib.Nifti1Image
    atrophy_mask: nib.Nifti1Image
    hippocampus_mask: nib.Nifti1Image
    tissue: nib.Nifti1Image
    orientation: str


@dataclasses.dataclass(frozen=True)
class _Sample:
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


def tissue_fractions(intensity: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume CSF, GM and WM fractions of a T1w image and the class means they mix.

    The means are those of a 3-class Gaussian mixture of the intensities
    inside ``brain``; a voxel between two neighbouring means is their linear
    mix (clipped to the darkest and brightest mean), so ``sum_c f_c mu_c``
    gives the intensity back inside that range.

    Returns
    -------
    fractions : numpy.ndarray
        ``(3, *shape)`` float32, 0 outside ``brain``.
    means : numpy.ndarray
        CSF, GM, WM intensities, increasing.
    """
    values = intensity[brain].astype(np.float64)
    mixture = GaussianMixture(3, random_state=0).fit(values.reshape(-1, 1))
    means = np.sort(mixture.means_.ravel())
    clipped = np.clip(values, means[0], means[2])
    dark = clipped <= means[1]
    fractions = np.zeros((3, *intensity.shape), np.float32)
    gm_low = (clipped - means[0]) / (means[1] - means[0])
    wm_high = (clipped - means[1]) / (means[2] - means[1])
    fractions[0][brain] = np.where(dark, 1.0 - gm_low, 0.0)
    fractions[1][brain] = np.where(dark, gm_low, 1.0 - wm_high)
    fractions[2][brain] = np.where(dark, 0.0, wm_high)
    return fractions, means


def _balanced(source: np.ndarray, sink_weight: np.ndarray) -> np.ndarray:
    """``source`` plus ``sink_weight`` scaled so that the total is 0."""
    return source - sink_weight * (source.sum() / sink_weight.sum())


def build_ground_truth(resolution: float = 2.0, regions: Sequence[str] = DEFAULT_REGIONS) -> GroundTruth:
    """Template, atlas, tissue fractions, planted-region maps and unit flows on the analysis grid.

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
    brain = template.mask_array().astype(bool)
    scan = np.asarray(template.t1w.dataobj, dtype=np.float32)
    scan = scan / np.float32(np.percentile(scan[brain], 99))
    fractions, means = tissue_fractions(scan, brain)
    intensity = np.einsum("c,c...->...", means.astype(np.float32), fractions).astype(np.float32)
    probseg = ndimage.gaussian_filter(region.astype(np.float32), REGION_SIGMA_MM / resolution)
    gradient = np.stack(np.gradient(probseg))
    push = -gradient / np.sqrt((gradient**2).sum(axis=0)).max()
    csf, gm, wm = (f.astype(np.float64) for f in fractions)
    outside = ndimage.distance_transform_edt(~brain, sampling=resolution)
    near = np.exp(-0.5 * (ndimage.distance_transform_edt(~region, sampling=resolution) / COMPENSATION_SIGMA_MM) ** 2)
    # Freed volume goes to CSF and to the space just outside the brain, near R but not inside it.
    space = csf + np.exp(-0.5 * (outside / resolution) ** 2) * ~brain
    pad = int(math.ceil(FLOW_PAD_MM / resolution))
    atrophy_flow = potential_flow(_balanced(-(gm + wm) * region, space * near * ~region), pad)
    age_flow = potential_flow(_balanced(-gm, csf), pad)
    depth = ndimage.distance_transform_edt(brain, sampling=resolution)
    ventricles = csf * (depth > VENTRICLE_DEPTH_MM)
    ventricle_flow = potential_flow(_balanced(ventricles, gm + wm), pad)
    points = template.affine[:3, :3] @ np.argwhere(brain).T + template.affine[:3, 3:]
    extent = template.affine[:3, :3] @ (np.array(template.shape) - 1)
    low = np.minimum(template.affine[:3, 3], template.affine[:3, 3] + extent) - ANATOMY_MARGIN_MM
    size = np.abs(extent) + 2 * ANATOMY_MARGIN_MM
    shape = tuple(int(math.ceil(s / ANATOMY_GRID_MM)) + 1 for s in size)
    return GroundTruth(
        template=template, regions=regions, intensity=intensity, fractions=fractions, class_means=means,
        envelope=brain.astype(np.float32), labels=labels, region=region, region_values=tuple(region_values),
        hippocampus_values=hippocampus_values, probseg=probseg.astype(np.float32), push=push.astype(np.float32),
        atrophy_flow=atrophy_flow.astype(np.float32), age_flow=age_flow.astype(np.float32),
        ventricle_flow=ventricle_flow.astype(np.float32), names=dict(atlas.labels),
        distance=outside.astype(np.float32), brain_points=points, anatomy_origin=low, anatomy_shape=shape,
    )


def draw_sites(seed: int, n_sites: int) -> list[Site]:
    """The cohort's scanners: site 0 is :data:`REFERENCE_SITE`, the others depart from it at random.

    Each other site's voxel size, contrast and noise differ from the
    reference by a random factor drawn away from 1 (up or down with equal
    probability; ranges in the module constants ``SITE_*``), and its bias
    strength is drawn from ``SITE_BIAS_SD``.
    """
    rng = np.random.default_rng(_child(_child(np.random.SeedSequence(seed), 0), 0))
    sites = [REFERENCE_SITE]
    for index in range(1, n_sites):
        signs = rng.choice([-1.0, 1.0], 3)
        sites.append(Site(
            index=index,
            voxel_scale=float(1.0 + signs[0] * rng.uniform(*SITE_VOXEL_CHANGE)),
            contrast=float(1.0 + signs[1] * rng.uniform(*SITE_CONTRAST_CHANGE)),
            noise=float(REFERENCE_SITE.noise * np.exp(signs[2] * rng.uniform(*SITE_NOISE_LOG_CHANGE))),
            bias_sd=float(rng.uniform(*SITE_BIAS_SD))))
    return sites


def _assign_sites(diagnoses: Sequence[str], n_sites: int, imbalance: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """Site of every subject: a share ``imbalance`` of AD (rounded) at site 0, see the module docstring."""
    sites = np.zeros(len(diagnoses), dtype=int)
    if n_sites == 1:
        return sites
    shares = {"AD": imbalance, "CN": (1.0 - imbalance) / (n_sites - 1), "MCI": 1.0 / n_sites}
    for group, share in shares.items():
        members = rng.permutation(np.flatnonzero(np.asarray(diagnoses) == group))
        at_reference = int(math.floor(share * len(members) + 0.5))
        others = members[at_reference:]
        sites[others] = 1 + np.arange(len(others)) % (n_sites - 1)
    return sites


def plan_cohort(n_subjects: int, *, seed: int = 0, effect_size: float | None = None, null: bool = False,
                n_mci: int = 0, sessions: int = 1, atrophy_model: str = ATROPHY_MODELS[0], sites: int = 1,
                site_imbalance: float | None = None) -> list[SubjectSpec]:
    """Decide every subject's label, diagnosis, demographics, site, severity and seed.

    Parameters
    ----------
    n_subjects : int
        Number of AD plus CN subjects; AD get ``ceil(n / 2)``, CN the rest.
    seed : int
        Root seed of the cohort.
    effect_size : float, optional
        Expected planted loss in AD (see the module docstring); default
        :data:`DEFAULT_EFFECT_SIZE` of the model.
    null : bool
        When True nobody gets atrophy; diagnoses, demographics and sites stay as they would be.
    n_mci : int
        Extra MCI subjects, at half the AD severity.
    sessions : int
        Sessions per subject.
    atrophy_model : {"tissue-loss", "darkening"}
        How atrophy is planted.
    sites : int
        Number of scanners.
    site_imbalance : float, optional
        Share of the AD subjects scanned at site 0 (default ``1 / sites``;
        no effect with one site).

    Returns
    -------
    list of SubjectSpec
        Subjects ``01, 02, ...`` (zero-padded to the width of the count), the
        diagnoses in an order shuffled with the seed.
    """
    if effect_size is None:
        effect_size = DEFAULT_EFFECT_SIZE[atrophy_model]
    root = np.random.SeedSequence(seed)
    n_ad = (n_subjects + 1) // 2
    diagnoses = ["AD"] * n_ad + ["CN"] * (n_subjects - n_ad) + ["MCI"] * n_mci
    diagnoses = [str(d) for d in np.random.default_rng(_child(root, 0)).permutation(diagnoses)]
    scanners = draw_sites(seed, sites)
    imbalance = 1.0 / sites if site_imbalance is None or sites == 1 else site_imbalance
    site_of = _assign_sites(diagnoses, sites, imbalance, np.random.default_rng(_child(_child(root, 0), 1)))
    width = max(2, len(str(len(diagnoses))))
    specs = []
    for number, diagnosis in enumerate(diagnoses, start=1):
        subject_seed = _child(root, number)
        rng = np.random.default_rng(_child(subject_seed, 0))
        mean, sd = AGE_DISTRIBUTION[diagnosis]
        age = int(np.clip(np.rint(rng.normal(mean, sd)), *AGE_LIMITS))
        sex = str(rng.choice(["F", "M"]))
        head_scale = float(rng.normal(HEAD_SCALE[sex], HEAD_SCALE_SD))
        ventricle_scale = float(np.exp(rng.normal(0.0, VENTRICLE_LOG_SD)))
        draw = float(rng.uniform(*SEVERITY_RANGE))
        severity = 0.0 if null or diagnosis == "CN" else draw * (MCI_FRACTION if diagnosis == "MCI" else 1.0)
        specs.append(SubjectSpec(
            label=f"{number:0{width}d}", diagnosis=diagnosis, age=age, sex=sex, head_scale=head_scale,
            ventricle_scale=ventricle_scale, site=scanners[site_of[number - 1]], severity=severity,
            effect_size=float(effect_size), atrophy_model=atrophy_model, seed=subject_seed, sessions=sessions))
    return specs


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


def _tissue_loss_amplitude(truth: GroundTruth, loss: float) -> float:
    """Amplitude ``A`` of the unit atrophy flow for which ``R`` loses exactly ``loss`` of its volume.

    The volume is that of the voxel cubes of ``R`` under the trilinear flow
    (:func:`adheat_app.deformation.cell_jacobian`), as the scans sample it.

    Raises
    ------
    ValueError
        If no amplitude reaches ``loss`` before the deformation folds.
    """
    corners = np.argwhere(truth.region)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(corners.min(axis=0), corners.max(axis=0)))
    gradients = sub_voxel_gradients(truth.atrophy_flow, box)[truth.region[box]]
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
    """Draw a subject's displacement fields and head size, and calibrate its atrophy.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    """
    rng = np.random.default_rng(_child(spec.seed, 1))
    field = np.zeros((3, *truth.anatomy_shape))
    for sd, sigma in ((ANATOMY_SD_MM, ANATOMY_SIGMA_MM), (FOLDING_SD_MM, FOLDING_SIGMA_MM)):
        noise = rng.standard_normal((3, *truth.anatomy_shape))
        smooth = np.stack([ndimage.gaussian_filter(c, sigma / ANATOMY_GRID_MM) for c in noise])
        field += smooth * (sd / smooth.std(axis=(1, 2, 3), keepdims=True))
    scaling = spec.head_scale * (1.0 + rng.uniform(-ANISOTROPY, ANISOTROPY, 3))
    # First order: the inverse of the small flow y -> y + f(y) is y -> y - f(y).
    anatomy_pullback = -(GM_LOSS_PER_YEAR * (spec.age - AGE_REFERENCE) * truth.age_flow
                         + math.log(spec.ventricle_scale) * truth.ventricle_flow)
    loss = spec.planted_loss
    shift = gain = 0.0
    if loss <= 0:
        return SubjectAnatomy(field.astype(np.float32), scaling, anatomy_pullback.astype(np.float32), None, None,
                              None, 0.0, shift, gain)
    pullback = None
    if spec.atrophy_model == "tissue-loss":
        forward = _tissue_loss_amplitude(truth, loss) * truth.atrophy_flow.astype(np.float64)
    else:
        shift = SHIFT_MM_PER_EFFECT * loss
        gain = _atrophy_gain(truth, shift, loss)
        pullback = (shift / truth.template.resolution * truth.push).astype(np.float32)
        forward = invert_displacement(pullback.astype(np.float64))
    determinant = cell_jacobian(forward)
    volume_loss = 1.0 - float(determinant[truth.region].mean())
    return SubjectAnatomy(field.astype(np.float32), scaling, anatomy_pullback.astype(np.float32), pullback,
                          forward.astype(np.float32) if pullback is None else None,
                          np.log(determinant).astype(np.float32), volume_loss, shift, gain)


def _sample(truth: GroundTruth, anatomy: SubjectAnatomy, points: np.ndarray, individual: bool = True) -> _Sample:
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
    return _Sample(fractions, factor, ndimage.map_coordinates(truth.labels, index, order=0))


def template_space_image(truth: GroundTruth, spec: SubjectSpec, individual: bool = True) -> np.ndarray:
    """A subject's image on the template grid, before pose, bias and noise, with its site's contrast.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    individual : bool
        Include the individual displacement, age and ventricle flows. False
        gives the template with only the planted atrophy, on which the effect
        size is defined (for ``darkening``: its mean inside ``truth.region``
        is ``1 - spec.planted_loss`` times the template's).

    Returns
    -------
    numpy.ndarray
        float32 array on the template grid, in the units of ``truth.intensity``.
    """
    anatomy = subject_anatomy(truth, spec)
    sample = _sample(truth, anatomy, truth.grid_points(), individual)
    return sample.intensity(spec.site.class_means(truth.class_means)).astype(np.float32)


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
    (:func:`template_space_image`: individual anatomy, planted atrophy and its
    site's contrast) plus Gaussian noise of SD ``noise`` times the site's noise
    relative to the reference site (intensity units of ``truth.intensity``),
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
            sd = noise * spec.site.noise / REFERENCE_SITE.noise
            noisy = image + rng.normal(0, sd, image.shape).astype(np.float32)
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


def _native_grid(truth: GroundTruth, spec: SubjectSpec, anatomy: SubjectAnatomy, rng: np.random.Generator
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
    zooms = (truth.template.resolution * spec.site.voxel_scale
             * (1.0 + rng.uniform(-VOXEL_JITTER, VOXEL_JITTER, 3)))
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


def _bias_field(shape: tuple[int, int, int], sd: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative bias: exp of a random quadratic polynomial of the voxel position."""
    u = [np.linspace(-1.0, 1.0, n).reshape([-1 if a == axis else 1 for a in range(3)])
         for axis, n in enumerate(shape)]
    terms = [u[0], u[1], u[2], u[0] ** 2, u[1] ** 2, u[2] ** 2, u[0] * u[1], u[0] * u[2], u[1] * u[2]]
    coefficients = rng.normal(0.0, sd, len(terms))
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
    orientation, shape, affine, to_anatomy = _native_grid(truth, spec, anatomy, rng)
    bias = _bias_field(shape, spec.site.bias_sd, rng)
    scale = float(np.exp(rng.uniform(*np.log(INTENSITY_SCALE))))
    noise_sd = float(rng.uniform(*NOISE_SPREAD)) * spec.site.noise * scale
    as_int16 = bool(rng.random() < 0.5)
    points = _affine_points(to_anatomy @ affine, shape)
    # Only points within reach of the brain can land on it: warp those, leave the rest 0.
    reach = anatomy.max_displacement(truth.template.resolution) + truth.template.resolution * math.sqrt(3)
    near = ndimage.map_coordinates(truth.distance, truth.to_index(points), order=0, cval=np.inf) <= reach
    sample = _sample(truth, anatomy, points[:, near])
    clean = np.zeros(shape)
    clean[near] = sample.intensity(spec.site.class_means(truth.class_means))
    labels = np.zeros(shape, dtype=truth.labels.dtype)
    labels[near] = sample.labels
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[near] = sample.tissue()
    signal = scale * bias * clean
    noise = rng.standard_normal((2, *shape)) * noise_sd
    magnitude = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
    data = np.rint(magnitude).clip(0, np.iinfo(np.int16).max).astype(np.int16) if as_int16 \
        else magnitude.astype(np.float32)
    masks = [np.isin(labels, values).astype(np.uint8) for values in (truth.region_values, truth.hippocampus_values)]
    return NativeScan(_nifti(data, affine, 1), _nifti(masks[0], affine, 1), _nifti(masks[1], affine, 1),
                      _nifti(tissue, affine, 1), orientation)


def _generated_by() -> dict:
    return {"Name": "adheat-simulate", "Version": __version__,
            "Description": "Simulated T1w cohort with planted atrophy (adheat_app.simulate)"}


def log_jacobian_path(root: Path, truth: GroundTruth, label: str) -> Path:
    """Where the template-space log-Jacobian of a subject's planted change is written under ``root``."""
    template = truth.template
    return Derivatives(root, root).subject_path(label, None, "logjacobian", space=template.space,
                                                res=template.res_label, desc="atrophy")


def write_subject(truth: GroundTruth, spec: SubjectSpec, out_dir: Path) -> float:
    """Simulate every session of one subject and write its scans and truth maps.

    Parameters
    ----------
    truth : GroundTruth
        The cohort's template-space truth.
    spec : SubjectSpec
        The subject.
    out_dir : Path
        Root of the raw dataset; the truth goes to ``derivatives/simulation``.

    Returns
    -------
    float
        The fraction of the region's volume the planted deformation removed.
    """
    anatomy = subject_anatomy(truth, spec)
    raw = Derivatives(out_dir, out_dir)  # used for BIDS path naming only
    truth_root = out_dir / "derivatives" / "simulation"
    truth_dir = Derivatives(truth_root, out_dir)
    log_jacobian = anatomy.log_jacobian if anatomy.log_jacobian is not None \
        else np.zeros(truth.template.shape, np.float32)
    template = truth.template
    truth_dir.write_image(log_jacobian_path(truth_root, truth, spec.label),
                          _nifti(log_jacobian, template.affine, 4), {
        "Description": "Log-Jacobian determinant of the planted deformation from the template to this subject, "
                       "on the template grid (negative: the template's volume shrinks in the subject). 0 "
                       "everywhere without atrophy. Age, ventricle size and individual anatomy are not included.",
        "Space": template.space, "Resolution": template.res_description, "AtrophyModel": spec.atrophy_model,
        "Diagnosis": spec.diagnosis, "Severity": spec.severity, "PlantedLoss": spec.planted_loss,
        "VolumeLoss": anatomy.volume_loss,
        "VolumeLossML": anatomy.volume_loss * float(truth.region.sum()) * truth.voxel_ml,
    })
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
            "AtlasRegions": truth.region_names, "Diagnosis": spec.diagnosis, "AtrophyModel": spec.atrophy_model,
            "Severity": spec.severity, "PlantedLoss": spec.planted_loss, "Carried": spec.planted_loss > 0,
            "VolumeLoss": anatomy.volume_loss, "ShiftMM": anatomy.shift, "IntensityGain": anatomy.gain,
            "Site": spec.site.index, "Orientation": scan.orientation,
        })
        hippocampus = truth_dir.subject_path(spec.label, ses, "mask", desc="hippocampus")
        truth_dir.write_image(hippocampus, scan.hippocampus_mask, {
            "Description": "AAL3 hippocampus (left and right) mapped through this scan's true warp onto the T1w "
                           "grid (nearest neighbour).",
            "Type": "ROI", "Sources": [source], "Atlas": "AAL3",
            "AtlasRegions": truth.hippocampus_names,
        })
        tissue = truth_dir.subject_path(spec.label, ses, "dseg", desc="tissue")
        truth_dir.write_image(tissue, scan.tissue, {
            "Description": "Tissue class of largest partial-volume fraction on the T1w grid, after the true warp "
                           "(background where less than half the voxel is brain).",
            "Sources": [source], "Labels": {"0": "background", **{str(i + 1): t for i, t in enumerate(TISSUES)}},
        })
    return anatomy.volume_loss


_WORKER_TRUTH: GroundTruth | None = None


def _init_worker(truth: GroundTruth) -> None:
    global _WORKER_TRUTH
    _WORKER_TRUTH = truth


def _write_subject_in_worker(spec: SubjectSpec, out_dir: Path) -> float:
    return write_subject(_WORKER_TRUTH, spec, out_dir)


def _check_arguments(out_dir: Path, n_subjects: int, resolution: float, effect_size: float, atrophy_model: str,
                     regions: Sequence[str], sessions: int, n_mci: int, nprocs: int, sites: int,
                     site_imbalance: float | None) -> None:
    """Reject argument values that cannot work, naming the option."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    if n_subjects < 2:
        raise InputError(f"--n-subjects {n_subjects}: need at least 2 (one AD, one CN)")
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise InputError(f"--resolution {resolution}: use a voxel size between {MIN_RESOLUTION:g} and "
                         f"{MAX_RESOLUTION:g} mm")
    if atrophy_model not in ATROPHY_MODELS:
        raise InputError(f"--atrophy-model {atrophy_model}: use one of {', '.join(ATROPHY_MODELS)}")
    if not 0 <= effect_size <= MAX_EFFECT_SIZE[atrophy_model]:
        raise InputError(f"--effect-size {effect_size}: use a value between 0 and "
                         f"{MAX_EFFECT_SIZE[atrophy_model]} for --atrophy-model {atrophy_model}")
    if not regions:
        raise InputError("--regions: name at least one AAL3 region pattern")
    if sessions < 1 or n_mci < 0 or nprocs < 0:
        raise InputError("--sessions must be at least 1, --n-mci and --nprocs must not be negative")
    if sites < 1:
        raise InputError(f"--sites {sites}: need at least 1")
    if site_imbalance is not None and not 0 <= site_imbalance <= 1:
        raise InputError(f"--site-imbalance {site_imbalance}: use a share between 0 and 1")


def _write_dataset_files(out_dir: Path, truth: GroundTruth, specs: list[SubjectSpec], volume_losses: list[float],
                         parameters: dict) -> None:
    """Write the dataset-level files: truth map, tables, README and both descriptions (raw last)."""
    template = truth.template
    truth_root = out_dir / "derivatives" / "simulation"
    name = simulation_truth_path(out_dir, template.space, template.res_label).name
    region_ml = float(truth.region.sum()) * truth.voxel_ml
    Derivatives(truth_root, out_dir).write_image(truth_root / name, _nifti(truth.probseg, template.affine, 4), {
        "Description": "Planted atrophy region: the AAL3 regions matching Regions, smoothed by a Gaussian "
                       f"(sigma {REGION_SIGMA_MM} mm), 0..1. The atrophy model says how a carrier loses it "
                       "(tissue-loss: grey-matter volume; darkening: intensity); per-subject amounts are in "
                       "participants.tsv here.",
        "Space": template.space, "Resolution": template.res_description, "Atlas": "AAL3",
        "Regions": list(truth.regions), "AtlasRegions": truth.region_names, "SmoothingSigmaMM": REGION_SIGMA_MM,
        "RegionVolumeML": region_ml, "AtrophyModel": parameters["atrophy_model"],
        "EffectSize": parameters["effect_size"], "Null": parameters["null"],
        "CarriedBy": [s.participant_id for s in specs if s.planted_loss > 0],
    })
    demographics = {
        "participant_id": [s.participant_id for s in specs], "diagnosis": [s.diagnosis for s in specs],
        "age": [s.age for s in specs], "sex": [s.sex for s in specs], "site": [s.site.index for s in specs]}
    truth_table = pd.DataFrame({
        **demographics, "head_scale": [round(s.head_scale, 6) for s in specs],
        "ventricle_scale": [round(s.ventricle_scale, 6) for s in specs],
        "severity": [round(s.severity, 6) for s in specs], "planted_loss": [round(s.planted_loss, 6) for s in specs],
        "volume_loss": [round(v, 6) for v in volume_losses],
        "volume_loss_ml": [round(v * region_ml, 4) for v in volume_losses]})
    write_tsv(truth_root / "participants.tsv", truth_table)
    write_json(truth_root / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis (as in the raw participants.tsv)."},
        "age": {"Description": "Age (years) as in the raw participants.tsv."},
        "sex": {"Description": "Sex as in the raw participants.tsv."},
        "site": {"Description": "Scanner site (sites.tsv here)."},
        "head_scale": {"Description": "Linear head size relative to the template (0.98 F / 1.02 M, SD 0.03)."},
        "ventricle_scale": {"Description": "Ventricle volume factor of the individual anatomy, before age."},
        "severity": {"Description": "Atrophy severity sigma_s: U(0.5, 1.5) for AD, half such a draw for MCI, "
                                    "0 for CN and in null cohorts."},
        "planted_loss": {"Description": "severity x effect size: the fraction of the planted region's volume "
                                        "(tissue-loss) or mean intensity (darkening) the subject loses."},
        "volume_loss": {"Description": "Fraction of the planted region's volume removed by the planted "
                                       "deformation, in template space (equals planted_loss for tissue-loss)."},
        "volume_loss_ml": {"Description": "That volume in ml of the template (before head size and anatomy).",
                           "Units": "ml"},
    })
    sites = sorted({s.site for s in specs}, key=lambda site: site.index)
    site_table = pd.DataFrame([
        {"site": site.index, **{k: round(v, 6) for k, v in dataclasses.asdict(site).items() if k != "index"},
         **{f"n_{group}": sum(s.site == site and s.diagnosis == group for s in specs)
            for group in ("AD", "CN", "MCI")}}
        for site in sites])
    write_tsv(truth_root / "sites.tsv", site_table)
    write_json(truth_root / "sites.json", {name: {"Description": text} for name, text in SITE_COLUMNS.items()})
    write_json(truth_root / "dataset_description.json", {
        "Name": "adheat-simulate ground truth", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
        "GeneratedBy": [_generated_by()], "DatasetLinks": {"raw": "../.."}, "Simulation": parameters,
    })
    write_tsv(out_dir / "participants.tsv", pd.DataFrame(demographics))
    write_json(out_dir / "participants.json", {
        "diagnosis": {"Description": "Simulated diagnosis", "Levels": {
            "AD": "Alzheimer's disease (planted atrophy)", "CN": "cognitively normal control",
            "MCI": "mild cognitive impairment (half the AD atrophy)"}},
        "age": {"Description": "Age at scan (simulated: AD 75 +- 8, CN 73 +- 6, MCI 74 +- 7)", "Units": "year"},
        "sex": {"Description": "Sex (simulated)", "Levels": {"F": "female", "M": "male"}},
        "site": {"Description": "Scanner site (simulated; 0 is the reference scanner)",
                 "Levels": {str(site.index): "reference scanner" if site.index == 0 else f"scanner {site.index}"
                            for site in sites}},
    })
    model = ("grey matter of" if parameters["atrophy_model"] == "tissue-loss" else "darkening of")
    write_text(out_dir / "README", (
        "Simulated T1w cohort made by adheat-simulate (adheat_app.simulate).\n\n"
        f"Every scan is made from the skull-stripped {template.space} template at {template.resolution:g} mm: its "
        "tissue classes are aged, the ventricles resized, deformed by a smooth random displacement and a folding "
        "field, and the head is scaled and posed in a scanner of its site with its own voxel size, orientation, "
        "contrast, bias field and Rician noise. AD subjects (and MCI at half severity) lose "
        f"{model} the AAL3 regions {', '.join(truth.regions)}"
        + (" (not in this null cohort: nobody carries it)" if parameters["null"] else "") + ".\n\n"
        "The truth is in derivatives/simulation: the planted region in template space, per subject the "
        "log-Jacobian of the planted change and the volume it removed (participants.tsv), the sites (sites.tsv), "
        "per scan the region, the hippocampus and the tissue classes on the scan's grid, and every simulation "
        "parameter in its dataset_description.json.\n"
        "No real person's data are included.\n"))
    write_json(out_dir / "dataset_description.json", {
        "Name": "adheat-simulate cohort", "BIDSVersion": BIDS_VERSION, "DatasetType": "raw",
        "GeneratedBy": [_generated_by()],
    })


def simulate_cohort(out_dir: str | os.PathLike, n_subjects: int = 40, resolution: float = 2.0, seed: int = 0,
                    effect_size: float | None = None, regions: Sequence[str] = DEFAULT_REGIONS, sessions: int = 1,
                    null: bool = False, n_mci: int = 0, nprocs: int = 1, atrophy_model: str = ATROPHY_MODELS[0],
                    sites: int = 1, site_imbalance: float | None = None) -> Path:
    """Write a simulated BIDS cohort with planted atrophy, and its ground truth.

    Parameters
    ----------
    out_dir : path-like
        New (or empty) folder for the raw BIDS dataset.
    n_subjects : int
        AD plus CN subjects (balanced: AD get ``ceil(n / 2)``).
    resolution : float
        Analysis-grid voxel size in mm; native voxels are this times the
        site's voxel scale, +- 10 %.
    seed : int
        Root seed; the same seed gives byte-identical files.
    effect_size : float, optional
        Expected planted loss in AD: fraction of the region's volume
        (``tissue-loss``) or mean intensity (``darkening``); default
        :data:`DEFAULT_EFFECT_SIZE` of the model, at most
        :data:`MAX_EFFECT_SIZE`.
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
    atrophy_model : {"tissue-loss", "darkening"}
        How atrophy is planted (module docstring).
    sites : int
        Number of scanner sites.
    site_imbalance : float, optional
        Share of AD subjects scanned at site 0 (default: ``1 / sites``; no
        effect with one site).

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
    if effect_size is None:
        effect_size = DEFAULT_EFFECT_SIZE.get(atrophy_model, 0.0)
    _check_arguments(out, n_subjects, resolution, effect_size, atrophy_model, regions, sessions, n_mci, nprocs,
                     sites, site_imbalance)
    truth = build_ground_truth(resolution, regions)
    specs = plan_cohort(n_subjects, seed=seed, effect_size=effect_size, null=null, n_mci=n_mci, sessions=sessions,
                        atrophy_model=atrophy_model, sites=sites, site_imbalance=site_imbalance)
    workers = min(nprocs or os.cpu_count() or 1, len(specs))
    LOGGER.info("Simulating %d subject(s) x %d session(s) at %g mm in %s (%d process(es))",
                len(specs), sessions, resolution, out, workers)
    try:
        if workers == 1:
            volume_losses = [write_subject(truth, spec, out) for spec in specs]
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_init_worker, initargs=(truth,)) as pool:
                futures = [pool.submit(_write_subject_in_worker, spec, out) for spec in specs]
                volume_losses = [future.result() for future in futures]
    except ValueError as exc:  # a planted loss the deformation cannot reach
        raise InputError(f"--effect-size {effect_size}: {exc}") from None
    parameters = {
        "seed": seed, "atrophy_model": atrophy_model, "effect_size": effect_size, "regions": list(regions),
        "null": null, "space": truth.template.space, "resolution": truth.template.resolution,
        "res_label": truth.template.res_label, "template_source": truth.template.source,
        "n_subjects": n_subjects, "n_mci": n_mci, "sessions": sessions, "sites": sites,
        "site_imbalance": 1.0 / sites if site_imbalance is None or sites == 1 else site_imbalance,
        "model": {
            "tissue_means": [round(float(m), 6) for m in truth.class_means],
            "region_sigma_mm": REGION_SIGMA_MM, "compensation_sigma_mm": COMPENSATION_SIGMA_MM,
            "shift_mm_per_effect": SHIFT_MM_PER_EFFECT, "severity_range": list(SEVERITY_RANGE),
            "mci_fraction": MCI_FRACTION, "age_distribution": {k: list(v) for k, v in AGE_DISTRIBUTION.items()},
            "age_limits": list(AGE_LIMITS), "age_reference": AGE_REFERENCE, "gm_loss_per_year": GM_LOSS_PER_YEAR,
            "ventricle_depth_mm": VENTRICLE_DEPTH_MM, "ventricle_log_sd": VENTRICLE_LOG_SD,
            "head_scale": HEAD_SCALE, "head_scale_sd": HEAD_SCALE_SD, "anisotropy": ANISOTROPY,
            "anatomy_sd_mm": ANATOMY_SD_MM, "anatomy_sigma_mm": ANATOMY_SIGMA_MM,
            "folding_sd_mm": FOLDING_SD_MM, "folding_sigma_mm": FOLDING_SIGMA_MM,
            "rotation_deg": ROTATION_DEG, "translation_mm": TRANSLATION_MM,
            "voxel_jitter": VOXEL_JITTER, "fov_margin_mm": list(FOV_MARGIN_MM),
            "intensity_scale": list(INTENSITY_SCALE), "noise_spread": list(NOISE_SPREAD),
            "orientations": list(ORIENTATIONS),
        },
    }
    _write_dataset_files(out, truth, specs, volume_losses, parameters)
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
                    "ages, sexes, head sizes and scanner sites, and its ground truth under "
                    "OUT/derivatives/simulation (docs/simulation.md).")
    parser.add_argument("out_dir", metavar="OUT", type=Path, help="New or empty output folder.")
    parser.add_argument("--n-subjects", type=int, default=40, help="AD plus CN subjects (default: %(default)s).")
    parser.add_argument("--resolution", type=float, default=2.0,
                        help="Analysis-grid voxel size in mm (default: %(default)s).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: %(default)s).")
    parser.add_argument("--atrophy-model", choices=ATROPHY_MODELS, default=ATROPHY_MODELS[0],
                        help="'tissue-loss': grey matter of the regions loses volume to CSF through a smooth "
                             "deformation (intensities keep their tissue values); 'darkening': the earlier model, "
                             "the regions' intensity falls (default: %(default)s).")
    parser.add_argument("--effect-size", type=float, default=None,
                        help="Expected planted loss in AD: fraction of the regions' volume (tissue-loss, default "
                             f"{DEFAULT_EFFECT_SIZE['tissue-loss']}, at most {MAX_EFFECT_SIZE['tissue-loss']}) or "
                             f"of their mean intensity (darkening, default {DEFAULT_EFFECT_SIZE['darkening']}, at "
                             f"most {MAX_EFFECT_SIZE['darkening']}).")
    parser.add_argument("--regions", nargs="+", default=list(DEFAULT_REGIONS), metavar="PATTERN",
                        help="AAL3 region name patterns of the planted atrophy (default: %(default)s).")
    parser.add_argument("--sessions", type=int, default=1, help="Sessions per subject (default: %(default)s).")
    parser.add_argument("--null", action="store_true", help="Plant no atrophy (labels carry no signal).")
    parser.add_argument("--n-mci", type=int, default=0, help="Extra MCI subjects at half severity.")
    parser.add_argument("--sites", type=int, default=1,
                        help="Scanner sites, each with its own voxel size, contrast, bias and noise; site 0 is the "
                             "reference scanner (default: %(default)s).")
    parser.add_argument("--site-imbalance", type=float, default=None, metavar="F",
                        help="Share of the AD subjects scanned at site 0 (default: 1 / sites, balanced; no effect "
                             "with one site); CN fill site 0 with the share (1 - F) / (sites - 1). With --sites 2, "
                             "--null and F = 1 the label is carried by the site only.")
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
                              sessions=args.sessions, null=args.null, n_mci=args.n_mci, nprocs=args.nprocs,
                              atrophy_model=args.atrophy_model, sites=args.sites,
                              site_imbalance=args.site_imbalance)
    except InputError as exc:
        print(f"adheat-simulate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
    print(out)
    return EXIT_OK
