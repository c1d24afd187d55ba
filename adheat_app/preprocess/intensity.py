"""Intensity normalisation inside the brain mask (``--intensity-norm``).

``zscore`` (Rieke et al. 2018): subtract the mean and divide by the standard
deviation of the voxels inside the brain mask. ``histogram``: piecewise-linear
histogram standardisation (Nyul & Udupa 1999) mapping the scan's in-mask
percentiles :data:`LANDMARKS` onto the template's, followed by the same
z-score, so both choices give images on the same scale. Voxels outside the
mask are 0.
"""

from __future__ import annotations

import numpy as np

#: Percentile landmarks of the histogram standardisation.
LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


def zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(data - mean) / sd`` inside ``mask``, 0 outside (float32)."""
    values = data[mask].astype(np.float64)
    sd = values.std()
    out = np.zeros(data.shape, np.float32)
    out[mask] = (values - values.mean()) / (sd if sd > 0 else 1.0)
    return out


def histogram_standardise(data: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                          reference_mask: np.ndarray) -> np.ndarray:
    """Map the in-mask percentiles of ``data`` onto those of ``reference`` (piecewise linear, extrapolated)."""
    source = np.percentile(data[mask], LANDMARKS)
    target = np.percentile(reference[reference_mask], LANDMARKS)
    source = np.maximum.accumulate(source + np.arange(len(source)) * 1e-6 * (abs(source[-1]) + 1))
    values = data[mask]
    mapped = np.interp(values, source, target)
    low, high = values < source[0], values > source[-1]
    mapped[low] = target[0] + (values[low] - source[0]) * (target[1] - target[0]) / (source[1] - source[0])
    mapped[high] = target[-1] + (values[high] - source[-1]) * (target[-1] - target[-2]) / (source[-1] - source[-2])
    out = np.zeros(data.shape, np.float32)
    out[mask] = mapped
    return out


def normalise(data: np.ndarray, mask: np.ndarray, method: str, reference: np.ndarray,
              reference_mask: np.ndarray) -> np.ndarray:
    """Apply ``--intensity-norm`` (``zscore`` or ``histogram``) inside ``mask``."""
    if method == "histogram":
        data = histogram_standardise(data, mask, reference, reference_mask)
    return zscore(data, mask)
