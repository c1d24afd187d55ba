"""Reference images: what Integrated Gradients starts from and what occlusion fills in.

The preprocessed scans are z-scored inside the brain mask, per scan, and 0
outside it. So ``zero`` is not black (Wang et al.'s zero baseline was black:
their images were min-max scaled to [0, 1]): it is a flat brain at the
subject's own mean brain intensity, on a background of the same value.
Rieke et al.'s occlusion value 0 was the population mean at each voxel
(they z-scored voxel-wise over the training images). Choices:

- ``zero``: the value 0 everywhere (as above).
- ``template``: the mean image of the fold's *training* scans (``set = train``
  in the fold's ``split.tsv``; no validation or test scan enters it), written
  as ``training_mean.nii.gz`` next to the fold model by the group level
  (:func:`training_mean`), so participant-level runs read the same image. It
  is the population average Rieke et al.'s fill stood for: a map then shows
  where the scan differs from the average training brain.
- ``blurred`` (IG only): the scan smoothed by a Gaussian of
  :data:`BLUR_FWHM_MM` mm FWHM (Sturmfels et al. 2020): removes the local
  shape (atrophy) while keeping the coarse intensity layout.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from adheat_app.cohort import Cohort
from adheat_app.errors import InputError
from adheat_app.io import read_json, save_nifti, write_json
from adheat_app.layout import SPLIT, TRAINING_MEAN, sidecar_path

LOGGER = logging.getLogger(__name__)

#: Full width at half maximum of the ``blurred`` IG baseline, in mm.
BLUR_FWHM_MM = 12.0


def blurred(volumes: torch.Tensor, resolution: float) -> torch.Tensor:
    """Each volume ``(N, C, X, Y, Z)`` smoothed by a Gaussian of :data:`BLUR_FWHM_MM` (zero beyond the grid)."""
    sigma = BLUR_FWHM_MM / resolution / np.sqrt(8 * np.log(2))
    data = volumes.detach().cpu().numpy()
    smooth = np.stack([gaussian_filter(v, sigma=(0, sigma, sigma, sigma), mode="constant") for v in data])
    return torch.from_numpy(smooth.astype(np.float32)).to(volumes.device)


def _split_digest(fold_dir: Path) -> str:
    return hashlib.sha256((fold_dir / SPLIT).read_bytes()).hexdigest()[:20]


def training_mean(fold_dir: Path, cohort: Cohort, volumes: np.ndarray) -> np.ndarray:
    """The mean input of a fold's training scans (float32 ``(C, X, Y, Z)``), read from or written to the fold folder.

    The file holds ``(X, Y, Z)`` for one channel and ``(X, Y, Z, C)`` for several.

    Parameters
    ----------
    fold_dir : Path
        Fold folder holding ``split.tsv`` (and, once written, :data:`TRAINING_MEAN`).
    cohort : Cohort
        Scans of this run, in the order of ``volumes``.
    volumes : numpy.ndarray
        ``(N, C, X, Y, Z)`` inputs of ``cohort`` (:func:`adheat_app.inputs.load_inputs`).

    Raises
    ------
    InputError
        When the file is missing or outdated and this run does not hold every training scan of the fold.
    """
    from adheat_app.training import read_split

    path = fold_dir / TRAINING_MEAN
    digest = _split_digest(fold_dir)
    channels = volumes.shape[1]
    side = read_json(sidecar_path(path)) if path.is_file() and sidecar_path(path).is_file() else {}
    if side.get("SplitHash") == digest and side.get("Channels", 1) == channels:
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
        return data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    split = read_split(fold_dir)
    train = {(str(r.subject), r.session) for r in split[split["set"] == "train"].itertuples()}
    rows = [i for i, scan in enumerate(cohort.scans) if (scan.subject, scan.session) in train]
    if len(rows) != len(train):
        raise InputError(f"{path} is missing or outdated and {len(train) - len(rows)} of the fold's {len(train)} "
                         "training scans are not in this run: run the group level with these models first (it "
                         "writes the file), or use --ig-baseline zero and --occlusion-fill zero")
    mean = np.zeros(volumes.shape[1:], np.float64)
    for i in rows:
        mean += np.asarray(volumes[i], np.float64)
    mean = (mean / len(rows)).astype(np.float32)
    affine = nib.load(cohort.scans[rows[0]].image).affine
    save_nifti(path, nib.Nifti1Image(mean[0] if channels == 1 else np.moveaxis(mean, 0, -1), affine))
    write_json(sidecar_path(path), {
        "Description": "mean of the fold's training scans (split.tsv set 'train'): the 'template' IG baseline "
                       "and occlusion fill", "SplitHash": digest, "NScans": len(rows), "Channels": channels,
        "Scans": sorted(cohort.scans[i].key for i in rows)})
    LOGGER.info("%s: mean of %d training scans", path, len(rows))
    return mean
