"""The anatomy subjects are made from: tissue fractions, atlas regions and the unit flows on the template grid."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.mixture import GaussianMixture

from adheat_app.deformation import potential_flow
from adheat_app.errors import InputError
from adheat_app.simulate.geometry import affine_points
from adheat_app.templates import DEFAULT_SPACE, Template, get_atlas, get_template


#: AAL3 name patterns of the default planted region: medial and inferior temporal lobe.
DEFAULT_REGIONS: tuple[str, ...] = ("Hippocampus", "Amygdala", "ParaHippocampal", "Temporal_Inf")
#: Tissue classes of the fraction maps, in order (label values 1, 2, 3 of the native tissue truth).
TISSUES: tuple[str, ...] = ("CSF", "GM", "WM")
REGION_SIGMA_MM = 3.0
COMPENSATION_SIGMA_MM = 8.0
VENTRICLE_DEPTH_MM = 15.0
ANATOMY_GRID_MM = 4.0
ANATOMY_MARGIN_MM = 48.0
FLOW_PAD_MM = 32.0
#: This module's model parameters, as the dataset description records them.
PARAMETERS = {"region_sigma_mm": REGION_SIGMA_MM, "compensation_sigma_mm": COMPENSATION_SIGMA_MM,
              "ventricle_depth_mm": VENTRICLE_DEPTH_MM}


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
        return affine_points(self.template.affine, self.template.shape)

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
