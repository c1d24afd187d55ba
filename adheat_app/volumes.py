"""Decoded-volume cache: each preprocessed image is decompressed once per run of the cohort.

Training, the SVM baseline and the heatmap methods all read the cohort's
template-space T1w images as one ``(N, X, Y, Z)`` array. :func:`load_volumes`
decodes the ``.nii.gz`` files once into a float16 ``.npy`` file in the work
folder, named by a hash of the images' content, and returns it memory-mapped
(read only). Later epochs, folds and methods read that array, not the NIfTI
files; a later run with unchanged images reuses it, and a changed image gets a
new file. float16 keeps z-scored intensities to about three significant digits
and halves the memory of float32.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.bids import file_hash
from adheat_app.io import atomic_path

LOGGER = logging.getLogger(__name__)

CACHE_DTYPE = np.float16


def cache_key(paths: Sequence[Path]) -> str:
    """Hash of the content of ``paths``, in order (names the cache file)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{Path(path).name}:{file_hash(Path(path))}\n".encode())
    return digest.hexdigest()[:20]


def load_volumes(paths: Sequence[Path], work_dir: Path) -> np.ndarray:
    """The images at ``paths`` as one read-only float16 array ``(N, X, Y, Z)``.

    Parameters
    ----------
    paths : sequence of Path
        3D NIfTI images on one grid (the preprocessed T1w of a cohort).
    work_dir : Path
        Folder of the cache (``<work_dir>/volumes/``).

    Returns
    -------
    numpy.memmap
        Memory-mapped, read-only. Convert slices with ``np.asarray(x, np.float32)``.

    Raises
    ------
    ValueError
        When the images do not share one grid shape.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no images to load")
    target = Path(work_dir) / "volumes" / f"volumes-{cache_key(paths)}.npy"
    if target.is_file():
        LOGGER.debug("volume cache hit: %s", target)
        return np.load(target, mmap_mode="r")
    shape = nib.load(paths[0]).shape[:3]
    LOGGER.info("decoding %d image(s) of %s into %s", len(paths), "x".join(map(str, shape)), target)
    with atomic_path(target) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=CACHE_DTYPE, shape=(len(paths), *shape))
        for i, path in enumerate(paths):
            img = nib.load(path)
            if img.shape[:3] != shape:
                raise ValueError(f"{path} has shape {img.shape[:3]}, not {shape} like {paths[0]}")
            array[i] = np.asarray(img.dataobj, dtype=np.float32)
        array.flush()
        del array
    return np.load(target, mmap_mode="r")
