"""Validation of one T1w input before anything is computed from it.

Every check raises :class:`~adheat_app.errors.InputError` with one line that
names the file, says what is wrong and how to fix it. The checks run inside the
per-subject job, so a broken scan fails only its own subject (crash file,
failed key) and the others finish; nothing is written for a scan that fails a
check. Reading the whole file here (not only its header) also catches
truncated or corrupt ``.nii.gz`` files before any work is done.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.errors import InputError
from adheat_app.layout import NIFTI_EXTENSIONS

#: Smallest and largest voxel edge (mm) accepted for a T1w scan.
VOXEL_RANGE_MM = (0.2, 8.0)
#: Largest ratio between the longest and the shortest voxel edge.
MAX_ANISOTROPY = 8.0


def load_t1w(path: Path) -> nib.Nifti1Image:
    """Read, validate and reorient one T1w image to RAS.

    Parameters
    ----------
    path : Path
        A ``.nii`` or ``.nii.gz`` file.

    Returns
    -------
    nibabel.Nifti1Image
        The 3D image as float32, reoriented to RAS+ (world coordinates unchanged).

    Raises
    ------
    InputError
        For a file that is not NIfTI, truncated or corrupt, 4D with several
        volumes, without a valid qform/sform, with absurd voxel sizes, all zero,
        or holding NaN/Inf values.
    """
    path = Path(path)
    if not path.name.endswith(NIFTI_EXTENSIONS):
        raise InputError(f"{path}: not a NIfTI file (.nii or .nii.gz); convert it with dcm2niix")
    try:
        img = nib.load(path)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {str(exc)[:120]}); "
                         "replace the file with an intact copy") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path}: {type(img).__name__} is not a NIfTI image; convert it to NIfTI-1")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path}: T1w must be one 3D volume, this image has shape {'x'.join(map(str, img.shape))}; "
                         "keep one volume (e.g. average the repetitions)")
    if min(shape) < 8:
        raise InputError(f"{path}: shape {'x'.join(map(str, shape))} is too small for a T1w scan")
    header = img.header
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        raise InputError(f"{path}: both qform_code and sform_code are 0 (no orientation); set the scanner "
                         "orientation in the header (e.g. reconvert with dcm2niix)")
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(f"{path}: the voxel-to-world affine is singular or not finite; fix the header")
    if zooms.min() < VOXEL_RANGE_MM[0] or zooms.max() > VOXEL_RANGE_MM[1] or \
            zooms.max() / zooms.min() > MAX_ANISOTROPY:
        raise InputError(f"{path}: voxel size {'x'.join(f'{z:.3g}' for z in zooms)} mm is implausible for a T1w "
                         f"(expected {VOXEL_RANGE_MM[0]}-{VOXEL_RANGE_MM[1]} mm per axis); fix pixdim/the affine")
    try:
        data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"{path}: the image data are truncated or corrupt ({type(exc).__name__}); replace the "
                         "file with an intact copy") from exc
    finite = np.isfinite(data)
    if not finite.all():
        raise InputError(f"{path}: {int((~finite).sum())} voxel(s) are NaN or Inf; fix the conversion or set "
                         "them to 0")
    if not np.any(data):
        raise InputError(f"{path}: every voxel is 0; the file holds no image")
    if data.min() < 0 and data.max() <= 0:
        raise InputError(f"{path}: every voxel is <= 0; a T1w magnitude image is positive")
    out = nib.Nifti1Image(data, affine)
    out.header.set_xyzt_units("mm")
    return nib.as_closest_canonical(out)
