"""Decoded-volume cache: each preprocessed image is decompressed once per run of the cohort.

Training, the SVM baseline and the heatmap methods all read the cohort's
template-space images as one ``(N, C, X, Y, Z)`` array (``C`` input channels,
:mod:`adheat_app.inputs`). :func:`load_channels` decodes the ``.nii.gz`` files
once into a float16 ``.npy`` file in the work folder, named by a hash of the
images' content, and returns it memory-mapped (read only); :func:`load_volumes`
is its one-channel form ``(N, X, Y, Z)``. Later epochs, folds and methods read that array, not the NIfTI
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
    """The images at ``paths`` as one read-only float16 array ``(N, X, Y, Z)`` (one channel of :func:`load_channels`)."""
    return load_channels([(Path(p),) for p in paths], work_dir)[:, 0]


def load_channels(rows: Sequence[Sequence[Path]], work_dir: Path, scales: Sequence[float] | None = None
                  ) -> np.ndarray:
    """Images as one read-only float16 array ``(N, C, X, Y, Z)``: row ``i`` holds the ``C`` images of ``rows[i]``.

    Parameters
    ----------
    rows : sequence of sequences of Path
        Per scan, its channel images (3D NIfTI images on one grid), the same number for every scan.
    work_dir : Path
        Folder of the cache (``<work_dir>/volumes/``).
    scales : sequence of float, optional
        Factor applied to each channel when it is decoded (default 1).

    Returns
    -------
    numpy.memmap
        Memory-mapped, read-only. Convert slices with ``np.asarray(x, np.float32)``.

    Raises
    ------
    ValueError
        When the images do not share one grid shape, or rows differ in their number of channels.
    """
    rows = [tuple(Path(p) for p in row) for row in rows]
    if not rows:
        raise ValueError("no images to load")
    n_channels = len(rows[0])
    if any(len(row) != n_channels for row in rows):
        raise ValueError("every scan needs the same number of channel images")
    scales = tuple(float(s) for s in (scales or (1.0,) * n_channels))
    key = cache_key([p for row in rows for p in row]) + ("" if set(scales) == {1.0} else f"-{scales}")
    target = Path(work_dir) / "volumes" / f"inputs-{hashlib.sha256(key.encode()).hexdigest()[:20]}-c{n_channels}.npy"
    if target.is_file():
        LOGGER.debug("volume cache hit: %s", target)
        return np.load(target, mmap_mode="r")
    shape = nib.load(rows[0][0]).shape[:3]
    LOGGER.info("decoding %d scan(s) x %d channel(s) of %s into %s", len(rows), n_channels,
                "x".join(map(str, shape)), target)
    with atomic_path(target) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=CACHE_DTYPE, shape=(len(rows), n_channels, *shape))
        for i, row in enumerate(rows):
            for c, (path, scale) in enumerate(zip(row, scales)):
                img = nib.load(path)
                if img.shape[:3] != shape:
                    raise ValueError(f"{path} has shape {img.shape[:3]}, not {shape} like {rows[0][0]}")
                array[i, c] = np.asarray(img.dataobj, dtype=np.float32) * scale
        array.flush()
        del array
    return np.load(target, mmap_mode="r")
