"""ANTs (antspyx) operations every registration backend shares: N4, ITK transform files, Jacobians.

:func:`n4` corrects the bias field before registration. The registration
backends (:mod:`adheat_app.preprocess.backends`) write ITK transform files (an
ANTs composite ``.h5`` or a displacement field ``.nii.gz``), which
:func:`apply_transform` resamples images and labels through;
:func:`jacobian` gives the determinant of a transform for QC (a folding
deformation can fit any image: NCC alone does not show it) and
:func:`log_jacobian` the tensor-based-morphometry map. The fixed image of
every registration is the template on a grid no finer than
:data:`REGISTRATION_MM`: the deformation is smooth on that scale, so a 1 mm
analysis registers at 2 mm and resamples the 1 mm output through the same
transform.

ANTs threads are set through ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` by the
job before antspyx is imported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.io import nifti_image

#: Finest grid (mm) registration runs on; finer analysis grids reuse its transform.
REGISTRATION_MM = 2.0
#: Smallest Jacobian determinant taken into a log (a folded voxel's determinant is at or below 0).
MIN_DETERMINANT = 1e-3
#: Interpolation names accepted by :func:`apply_transform`, mapped to ANTs interpolators.
INTERPOLATORS = {"linear": "linear", "nearest": "nearestNeighbor", "label": "genericLabel",
                 "bspline": "bSpline"}


def to_ants(img: nib.Nifti1Image):
    """A float32 ANTs image from a 3D NIfTI image (world coordinates kept)."""
    import ants

    return ants.from_nibabel_nifti(to_nifti_float(img))


def to_nifti(image, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """The array of an ANTs image on ``reference``'s grid as a float32 NIfTI image."""
    return nifti_image(image.numpy().astype(np.float32), reference.affine, code=1)


def n4(img: nib.Nifti1Image, mask: np.ndarray | None = None) -> nib.Nifti1Image:
    """N4 bias-field correction (Tustison et al. 2010) inside ``mask`` (default: ANTs' foreground mask)."""
    import ants

    image = to_ants(img)
    weight = ants.get_mask(image) if mask is None else to_ants(nib.Nifti1Image(mask.astype(np.float32), img.affine))
    corrected = ants.n4_bias_field_correction(image, mask=weight, shrink_factor=4,
                                              convergence={"iters": [50, 50, 30], "tol": 1e-6})
    return to_nifti(corrected, img)


def to_nifti_float(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """``img`` as a float32 NIfTI image with qform and sform set (what ANTs reads)."""
    return nifti_image(np.asarray(img.dataobj, dtype=np.float32), img.affine, code=1, units=("mm", "sec"))


def save_pair(moving: nib.Nifti1Image, fixed: nib.Nifti1Image, workdir: Path) -> tuple[Path, Path]:
    """Write ``moving`` and ``fixed`` as float32 NIfTI files under ``workdir`` (what registration libraries read)."""
    workdir.mkdir(parents=True, exist_ok=True)
    fixed_path, moving_path = workdir / "fixed.nii", workdir / "moving.nii"
    nib.save(to_nifti_float(fixed), fixed_path)
    nib.save(to_nifti_float(moving), moving_path)
    return moving_path, fixed_path


def identity_transforms(workdir: Path) -> tuple[Path, Path]:
    """Identity transforms as ANTs affine transforms (forward and inverse files) under ``workdir``."""
    import ants

    workdir.mkdir(parents=True, exist_ok=True)
    forward, inverse = workdir / "identity.h5", workdir / "identity_inverse.h5"
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3), str(forward))
    shutil.copyfile(forward, inverse)
    return forward, inverse


def _composed_field(transform: Path, reference: nib.Nifti1Image, workdir: Path):
    """``transform`` (affine and deformation) composed into one displacement field on ``reference``'s grid.

    Returns the ANTs grid image and the field's file (antsApplyTransforms' compose mode).
    """
    import ants

    workdir.mkdir(parents=True, exist_ok=True)
    grid = to_ants(nib.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    return grid, ants.apply_transforms(grid, grid, [str(transform)], compose=str(workdir / "jacobian_"))


def jacobian(transform: Path, reference: nib.Nifti1Image, workdir: Path) -> np.ndarray:
    """Jacobian determinant of ``transform`` on ``reference``'s grid (at or below 0 where it folds).

    The transform is composed into one displacement field on the grid, whose
    determinant ANTs computes. A diffeomorphic SyN result is positive
    everywhere; the value is the volume of the T1w region a template voxel
    maps to over the voxel's own volume (below 1 where the subject's tissue is
    smaller than the template's).
    """
    import ants

    grid, field = _composed_field(transform, reference, workdir)
    return ants.create_jacobian_determinant_image(grid, field).numpy()


def log_jacobian(transform: Path, reference: nib.Nifti1Image, mask: np.ndarray, workdir: Path
                 ) -> tuple[np.ndarray, dict]:
    """Log Jacobian determinant of ``transform``'s deformation beyond its global linear part, 0 outside ``mask``.

    The tensor-based-morphometry map (Ashburner & Friston 2000; Hua et al.
    2008 removed global scale by a 9-parameter affine registration first):
    the transform is composed into one displacement field ``u`` on
    ``reference``'s grid, the point map ``x -> x + u(x)`` is fitted over the
    ``mask`` voxels by the affine map ``M x + t`` (least squares), and the
    result is ``log det J(x) - log |det M|``: negative where the subject has
    less tissue than the template *relative to its whole brain*, so head size
    does not enter it. Determinants at or below 0 (a folded deformation) are
    clipped to :data:`MIN_DETERMINANT` before the log.

    Returns
    -------
    numpy.ndarray
        float32 map on ``reference``'s grid.
    dict
        ``GlobalLogDeterminant`` (``log |det M|``), ``FoldedVoxels`` (in ``mask``) and the method, for the sidecar.
    """
    import ants

    grid, field = _composed_field(transform, reference, workdir)
    determinant = ants.create_jacobian_determinant_image(grid, field).numpy()
    displacement = ants.image_read(field).numpy()
    index = np.argwhere(mask)
    points = (np.asarray(grid.direction) @ (index * np.asarray(grid.spacing)).T).T + np.asarray(grid.origin)
    mapped = points + displacement[mask]
    design = np.hstack([points, np.ones((len(points), 1))])
    coefficients, *_ = np.linalg.lstsq(design, mapped, rcond=None)
    global_log = float(np.log(abs(np.linalg.det(coefficients[:3]))))
    inside = determinant[mask]
    out = np.zeros(mask.shape, np.float32)
    out[mask] = np.log(np.maximum(inside, MIN_DETERMINANT)) - global_log
    return out, {"GlobalLogDeterminant": round(global_log, 6), "FoldedVoxels": int(np.sum(inside <= 0)),
                 "Method": "log det J of the composed transform minus log |det M| of its least-squares affine "
                           "fit inside the template brain mask"}


def apply_transform(img: nib.Nifti1Image, reference: nib.Nifti1Image, transform: Path,
                    interpolation: str = "linear") -> nib.Nifti1Image:
    """Resample ``img`` onto ``reference``'s grid through an ANTs transform file.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Image in the transform's source space.
    reference : nibabel.Nifti1Image
        Grid of the output (its world space is the transform's target).
    transform : Path
        ANTs transform (composite ``.h5``, affine ``.mat`` or warp field).
    interpolation : {"linear", "nearest", "label", "bspline"}
        Interpolation of ``img``.
    """
    import ants

    if interpolation not in INTERPOLATORS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATORS)}, got {interpolation!r}")
    ref = to_ants(nib.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine))
    out = ants.apply_transforms(ref, to_ants(img), [str(transform)], interpolator=INTERPOLATORS[interpolation])
    return to_nifti(out, reference)
