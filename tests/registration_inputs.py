"""A template-derived head with a known deformation, for the registration backend tests.

:func:`moved_template` resamples the analysis template onto a native grid
through a known map: a global affine (anisotropic scale, rotation, shift) and a
Gaussian expansion of the native coordinates around one point, so the template
region around it is *smaller* in the native scan (planted tissue loss: the log
Jacobian of the template-to-native map is ``-3 log(1 + a)`` at its centre). It
depends on the template alone, not on the simulator, so the fixed numbers of
``tests/test_registration.py`` stay valid when the simulator changes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Centre of the planted loss (MNI mm, left medial temporal lobe), its Gaussian width (mm) and strength ``a``.
LOSS_CENTRE, LOSS_SIGMA, LOSS_STRENGTH = np.array([-26.0, -20.0, -14.0]), 10.0, 0.25
#: Native voxel size (mm) of the moved head.
NATIVE_MM = 2.0


def _native_to_template(points: np.ndarray) -> np.ndarray:
    """The known map from native world coordinates to template world coordinates (N x 3 -> N x 3)."""
    angle = np.deg2rad(6.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    linear = rotation @ np.diag([1.06, 0.97, 1.02])
    centre = LOSS_CENTRE  # the bump is placed where the template's region lands in native space
    native_centre = np.linalg.solve(linear, centre - np.array([4.0, -3.0, 2.0]))
    weight = np.exp(-((points - native_centre) ** 2).sum(1) / (2 * LOSS_SIGMA ** 2))[:, None]
    expanded = points + LOSS_STRENGTH * (points - native_centre) * weight
    return expanded @ linear.T + np.array([4.0, -3.0, 2.0])


def moved_template(folder: Path, template) -> Path:
    """Write the moved template brain as ``sub-01_T1w.nii.gz`` (int16, skull-stripped sidecar) under ``folder``.

    Parameters
    ----------
    folder : Path
        Where the image and its sidecar go (created).
    template : adheat_app.templates.Template
        The analysis template (its T1w is the source image).
    """
    folder.mkdir(parents=True, exist_ok=True)
    source = np.asarray(template.t1w.dataobj, dtype=np.float32)
    affine = np.diag([NATIVE_MM, NATIVE_MM, NATIVE_MM, 1.0])
    affine[:3, 3] = [-98.0, -132.0, -80.0]
    shape = (100, 118, 98)
    index = np.indices(shape).reshape(3, -1).T
    world = index * NATIVE_MM + affine[:3, 3]
    source_index = (np.linalg.inv(template.affine) @ np.c_[_native_to_template(world), np.ones(len(world))].T)[:3]
    data = ndimage.map_coordinates(source, source_index, order=1, cval=0.0).reshape(shape)
    data = np.rint(data * 1000 / source.max()).astype(np.int16)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = folder / "sub-01_T1w.nii.gz"
    nib.save(img, path)
    path.with_name("sub-01_T1w.json").write_text(json.dumps({"SkullStripped": True}))
    return path


def planted_region(template, radius_mm: float = 1.5 * LOSS_SIGMA) -> np.ndarray:
    """Template voxels within ``radius_mm`` of the loss centre, inside the template brain (boolean array)."""
    index = np.indices(template.shape).reshape(3, -1).T
    world = index @ template.affine[:3, :3].T + template.affine[:3, 3]
    near = (((world - LOSS_CENTRE) ** 2).sum(1) <= radius_mm ** 2).reshape(template.shape)
    return near & template.mask_array()


def native_region(path: Path, template, radius_mm: float = 1.5 * LOSS_SIGMA) -> np.ndarray:
    """The native voxels of the moved head at ``path`` whose template position lies in :func:`planted_region`."""
    img = nib.load(path)
    index = np.indices(img.shape).reshape(3, -1).T
    world = _native_to_template(index @ img.affine[:3, :3].T + img.affine[:3, 3])
    near = ((world - LOSS_CENTRE) ** 2).sum(1) <= radius_mm ** 2
    voxel = np.rint((np.linalg.inv(template.affine) @ np.c_[world, np.ones(len(world))].T)[:3]).astype(int).T
    inside = np.all((voxel >= 0) & (voxel < np.asarray(template.shape)), axis=1)
    brain = np.zeros(len(world), bool)
    brain[inside] = template.mask_array()[tuple(voxel[inside].T)]
    return (near & brain).reshape(img.shape)
