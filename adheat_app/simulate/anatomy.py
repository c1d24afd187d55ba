"""The anatomy subjects are made from: one parent's tissue fractions, atlas regions and unit flows.

Everything lives on the analysis grid (the template's shape and affine). The
parent (:mod:`adheat_app.simulate.parents`) is the template itself or another
head placed on that grid by an affine registration, so its anatomy is its own;
its AAL3 regions came through SyN, and ``to_template`` maps its truth maps to
template space.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.mixture import GaussianMixture

from adheat_app.deformation import potential_flow
from adheat_app.errors import InputError
from adheat_app.simulate.geometry import affine_points
from adheat_app.simulate.parents import TEMPLATE_PARENT, Parent, load_parent
from adheat_app.simulate.regions import ATROPHIED_LOSS, default_regions
from adheat_app.templates import DEFAULT_SPACE, Template, get_atlas, get_template


#: AAL3 name patterns of the default planted set: every region group of :mod:`adheat_app.simulate.regions`.
DEFAULT_REGIONS: tuple[str, ...] = default_regions()
#: Tissue classes of the fraction maps, in order (label values 1, 2, 3 of the native tissue truth).
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
#: Smoothing of region maps (Gaussian sigma, mm).
REGION_SIGMA_MM = 3.0
#: Reach of the space the planted loss frees (Gaussian sigma of the distance to ``R``, mm).
COMPENSATION_SIGMA_MM = 8.0
#: CSF deeper than this below the brain surface counts as ventricle (mm).
VENTRICLE_DEPTH_MM = 15.0
#: Coarse grid of the individual displacement: spacing and margin around the template (mm).
ANATOMY_GRID_MM, ANATOMY_MARGIN_MM = 4.0, 48.0
#: Zero padding of the Poisson solves (mm).
FLOW_PAD_MM = 32.0
#: This module's model parameters, as the dataset description records them.
PARAMETERS = {"region_sigma_mm": REGION_SIGMA_MM, "compensation_sigma_mm": COMPENSATION_SIGMA_MM,
              "ventricle_depth_mm": VENTRICLE_DEPTH_MM}


@dataclasses.dataclass(frozen=True, eq=False)
class GroundTruth:
    """The anatomy shared by every subject made from one parent, on the analysis grid.

    Attributes
    ----------
    template : Template
        The analysis template (the registration target; its grid is this grid).
    parent : Parent
        The head the subjects are made from (``parent.name == "template"``: the template itself).
    regions : tuple of str
        AAL3 name patterns of the planted region.
    intensity : numpy.ndarray
        The parent synthesised from its tissue fractions (``sum_c f_c mu_c``),
        in units where the template's 99th brain percentile is 1 (float32).
    fractions : numpy.ndarray
        CSF, GM and WM partial-volume fractions, shape ``(3, *grid)``, 0 outside
        the brain (float32).
    class_means : numpy.ndarray
        CSF, GM and WM intensities ``mu`` (3-class Gaussian mixture).
    envelope : numpy.ndarray
        The parent's brain mask as float32 (the envelope tissue cannot leave).
    labels : numpy.ndarray
        AAL3 labels in the parent's anatomy (int16).
    region : numpy.ndarray
        The planted region ``R`` in the parent (bool).
    template_labels, template_region : numpy.ndarray
        AAL3 labels and ``R`` on the template itself.
    region_values, hippocampus_values : tuple of int
        AAL3 label values making up ``R`` and the hippocampus.
    probseg : numpy.ndarray
        ``R`` smoothed by a Gaussian of sigma 3 mm, 0..1 (float32).
    push : numpy.ndarray
        ``-grad(probseg)`` scaled to a largest length of 1, shape ``(3, *grid)``,
        in voxel axes (float32; the darkening model's inward warp).
    atrophy_sink : numpy.ndarray
        Where the volume the planted tissue loss frees goes (CSF and the space
        just outside the brain near ``R``, not inside it; float32 weights): the
        positive source of :func:`atrophy_flow`.
    age_flow, ventricle_flow : numpy.ndarray
        Unit displacements (voxels, ``(3, *grid)``, float32) of one unit of
        age-related GM loss and of one unit of log ventricle scaling (see the
        package docstring).
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
    parent: Parent
    regions: tuple[str, ...]
    intensity: np.ndarray
    fractions: np.ndarray
    class_means: np.ndarray
    envelope: np.ndarray
    labels: np.ndarray
    region: np.ndarray
    template_labels: np.ndarray
    template_region: np.ndarray
    region_values: tuple[int, ...]
    hippocampus_values: tuple[int, ...]
    probseg: np.ndarray
    push: np.ndarray
    atrophy_sink: np.ndarray
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
        return affine_points(self.template.affine, self.template.shape)

    def template_points(self) -> np.ndarray:
        """World coordinates (mm) in the parent of every template voxel: its SyN correspondence, ``(3, *grid)``."""
        if self.parent.to_template is None:
            return self.grid_points()
        affine = self.template.affine
        return np.einsum("ij,j...->i...", affine[:3, :3], self.parent.to_template.astype(np.float64)) \
            + affine[:3, 3].reshape(3, 1, 1, 1)

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Template voxel coordinates of world ``points`` (first axis: x, y, z)."""
        inverse = np.linalg.inv(self.template.affine)
        return np.einsum("ij,j...->i...", inverse[:3, :3], points) + inverse[:3, 3].reshape(
            (3,) + (1,) * (points.ndim - 1))


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


def build_ground_truth(resolution: float = 2.0, regions: Sequence[str] = DEFAULT_REGIONS,
                       anatomy: str | os.PathLike = TEMPLATE_PARENT) -> GroundTruth:
    """Parent, atlas, tissue fractions, planted-region maps and unit flows on the analysis grid.

    Parameters
    ----------
    resolution : float
        Voxel size of the analysis grid in mm.
    regions : sequence of str
        AAL3 name patterns (case-insensitive substrings) of the planted region.
    anatomy : str or path-like
        The parent: ``template`` (the registration target), a built-in name
        or a T1w file (:func:`adheat_app.simulate.parents.load_parent`).

    Raises
    ------
    InputError
        When a pattern matches no AAL3 region, or the parent cannot be used.
    """
    template = get_template(resolution, DEFAULT_SPACE)  # the call get_atlas makes, so its cache is hit
    atlas = get_atlas(resolution)
    regions = tuple(regions)
    try:
        region_values = atlas.region_values(regions)
    except ValueError as exc:
        raise InputError(f"--regions {' '.join(regions)}: {exc}") from None
    hippocampus_values = tuple(atlas.region_values(["hippocampus"]))
    parent = load_parent(anatomy, template)
    labels = parent.labels.astype(np.int16)
    region = np.isin(labels, region_values)
    template_labels = atlas.array().astype(np.int16)
    brain = parent.mask
    scan = parent.brain / np.float32(np.percentile(parent.brain[brain], 99))
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
        template=template, parent=parent, regions=regions, intensity=intensity, fractions=fractions,
        class_means=means, envelope=brain.astype(np.float32), labels=labels, region=region,
        template_labels=template_labels, template_region=np.isin(template_labels, region_values),
        region_values=tuple(region_values), hippocampus_values=hippocampus_values,
        probseg=probseg.astype(np.float32), push=push.astype(np.float32),
        atrophy_sink=(space * near * ~region).astype(np.float32), age_flow=age_flow.astype(np.float32),
        ventricle_flow=ventricle_flow.astype(np.float32), names=dict(atlas.labels),
        distance=outside.astype(np.float32), brain_points=points, anatomy_origin=low, anatomy_shape=shape,
    )


def atrophy_flow(truth: GroundTruth, loss_map: np.ndarray) -> np.ndarray:
    """The unscaled tissue-loss flow of a subject: divergence ``-(f_GM + f_WM) loss_map``, balanced by the sink.

    ``loss_map`` is the subject's fractional loss of every voxel of ``R`` (0
    elsewhere); to first order the flow removes that fraction of each voxel's
    tissue. Returns float64 voxels ``(3, *grid)``.
    """
    tissue = truth.fractions[1].astype(np.float64) + truth.fractions[2]
    pad = int(math.ceil(FLOW_PAD_MM / truth.template.resolution))
    return potential_flow(_balanced(-tissue * loss_map, truth.atrophy_sink.astype(np.float64)), pad)


def region_map(truth: GroundTruth, losses: dict[int, float]) -> np.ndarray:
    """A subject's atrophied regions on the template: the AAL3 regions losing at least ``ATROPHIED_LOSS``,
    smoothed by a Gaussian of sigma :data:`REGION_SIGMA_MM` (float32, 0..1)."""
    atrophied = [value for value, loss in losses.items() if loss >= ATROPHIED_LOSS]
    mask = np.isin(truth.template_labels, atrophied).astype(np.float32)
    return ndimage.gaussian_filter(mask, REGION_SIGMA_MM / truth.template.resolution).astype(np.float32)


def to_template_space(truth: GroundTruth, parent_map: np.ndarray) -> np.ndarray:
    """A map in the parent's anatomy sampled on the template (linear; the parent's SyN correspondence).

    The identity for the template parent.
    """
    if truth.parent.to_template is None:
        return parent_map
    return ndimage.map_coordinates(parent_map, truth.parent.to_template, order=1).astype(parent_map.dtype)
