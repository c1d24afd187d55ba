"""Brain extraction: decide whether a T1w is already skull-stripped, and run deepbet when it is not.

``--skull-strip auto`` trusts the BIDS sidecar's ``SkullStripped`` field where
it exists; otherwise an image is taken as skull-stripped when its filled
foreground is brain-sized (under :data:`STRIPPED_MAX_ML` millilitres; a whole
head with skull, scalp and neck is well over 2.5 l). Already stripped images
get a mask from their own foreground; the others go through deepbet (Fisch et
al. 2024), whose weights ship in its wheel, on the CPU unless CUDA is present.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from adheat_app.layout import sidecar_path
from adheat_app.memory import reuse_cpu_memory

#: Foreground volume (ml) below which an image without a sidecar verdict counts as skull-stripped.
STRIPPED_MAX_ML = 2400.0
#: Fraction of the robust maximum below which voxels of a stripped image are background.
STRIPPED_THRESHOLD = 0.08


def sidecar_says_stripped(path: Path) -> bool | None:
    """``SkullStripped`` from the JSON sidecar next to a BIDS image (None when absent)."""
    try:
        value = json.loads(sidecar_path(path).read_text()).get("SkullStripped")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, bool) else None


def _largest_filled(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == sizes.argmax())


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1D sample."""
    hist, edges = np.histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(hist)
    above = below[-1] - below
    mass = np.cumsum(hist * centres)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    return float(centres[np.argmax(below * above * (mean_below - mean_above) ** 2)])


def foreground_volume_ml(img: nib.Nifti1Image) -> float:
    """Volume (ml) of the largest filled component above Otsu's threshold of the smoothed image."""
    data = ndimage.gaussian_filter(np.asarray(img.dataobj, dtype=np.float32), 1.0)
    mask = _largest_filled(data > otsu_threshold(data.ravel()))
    return float(mask.sum() * np.prod(img.header.get_zooms()[:3]) / 1000.0)


def is_skull_stripped(img: nib.Nifti1Image, path: Path, mode: str) -> tuple[bool, str]:
    """Whether to skip brain extraction, and why.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        The validated T1w.
    path : Path
        Its file (for the sidecar).
    mode : {"auto", "force", "skip"}
        ``--skull-strip``.

    Returns
    -------
    stripped : bool
        True when the input is treated as already skull-stripped.
    reason : str
        How that was decided (recorded in the sidecar).
    """
    if mode == "force":
        return False, "--skull-strip force"
    if mode == "skip":
        return True, "--skull-strip skip"
    verdict = sidecar_says_stripped(path)
    if verdict is not None:
        return verdict, f"input sidecar SkullStripped={str(verdict).lower()}"
    volume = foreground_volume_ml(img)
    return volume < STRIPPED_MAX_ML, f"foreground volume {volume:.0f} ml (threshold {STRIPPED_MAX_ML:.0f} ml)"


def stripped_mask(img: nib.Nifti1Image) -> np.ndarray:
    """Brain mask of an already skull-stripped image: its filled, closed foreground."""
    data = ndimage.gaussian_filter(np.asarray(img.dataobj, dtype=np.float32), 0.7)
    mask = data > STRIPPED_THRESHOLD * np.percentile(data[data > 0], 99)
    mask = ndimage.binary_closing(mask, iterations=2)
    return _largest_filled(mask)


@functools.lru_cache(maxsize=1)
def _extractor():
    import torch
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def deepbet_mask(img: nib.Nifti1Image) -> np.ndarray:
    """Brain mask of a whole-head image from deepbet (same grid as ``img``), CPU memory kept for reuse."""
    import torch

    with reuse_cpu_memory(torch.device("cpu")):
        _, mask, _ = _extractor().run(img)
    return np.asarray(mask.dataobj) > 0
