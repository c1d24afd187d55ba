"""Native scan synthesis: a subject posed in a scanner of its site, with its grid, bias field and noise."""

from __future__ import annotations

import dataclasses
import math

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from adheat_app.simulate.anatomy import GroundTruth
from adheat_app.simulate.cohort import SubjectSpec, child_seed
from adheat_app.simulate.geometry import affine_points, nifti
from adheat_app.simulate.subject import SubjectAnatomy, sample_subject


#: Stored orientations of the native scans (NIfTI axis codes), drawn per scan.
ORIENTATIONS: tuple[str, ...] = ("RAS", "LAS", "LPS", "LIA", "PIL", "ASR")
ROTATION_DEG = 10.0
TRANSLATION_MM = 10.0
VOXEL_JITTER = 0.10
FOV_MARGIN_MM = (10.0, 25.0)
INTENSITY_SCALE = (300.0, 3000.0)
NOISE_SPREAD = (0.5, 1.5)
#: This module's model parameters, as the dataset description records them.
PARAMETERS = {"rotation_deg": ROTATION_DEG, "translation_mm": TRANSLATION_MM, "voxel_jitter": VOXEL_JITTER,
              "fov_margin_mm": list(FOV_MARGIN_MM), "intensity_scale": list(INTENSITY_SCALE),
              "noise_spread": list(NOISE_SPREAD), "orientations": list(ORIENTATIONS)}


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
    rng = np.random.default_rng(child_seed(spec.seed, 2 + session))
    orientation, shape, affine, to_anatomy = _native_grid(truth, spec, anatomy, rng)
    bias = _bias_field(shape, spec.site.bias_sd, rng)
    scale = float(np.exp(rng.uniform(*np.log(INTENSITY_SCALE))))
    noise_sd = float(rng.uniform(*NOISE_SPREAD)) * spec.site.noise * scale
    as_int16 = bool(rng.random() < 0.5)
    points = affine_points(to_anatomy @ affine, shape)
    # Only points within reach of the brain can land on it: warp those, leave the rest 0.
    reach = anatomy.max_displacement(truth.template.resolution) + truth.template.resolution * math.sqrt(3)
    near = ndimage.map_coordinates(truth.distance, truth.to_index(points), order=0, cval=np.inf) <= reach
    sample = sample_subject(truth, anatomy, points[:, near])
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
    return NativeScan(nifti(data, affine, 1), nifti(masks[0], affine, 1), nifti(masks[1], affine, 1),
                      nifti(tissue, affine, 1), orientation)
