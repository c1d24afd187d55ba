"""Intensity normalisation inside the brain mask (``--intensity-norm``).

``whitematter`` (default): divide by the median intensity of the template's
white matter, i.e. of the voxels of the registered scan that lie in the
template's white-matter mask (:func:`template_white_matter`). Voxels keep
their ratio to white matter (white matter about 1, grey matter about 0.6-0.7,
CSF and background near 0), and a regional change elsewhere — grey-matter
atrophy in one lobe — cannot move any other voxel's value: the median of a
tissue that the change does not touch is its only statistic. This is the idea
of WhiteStripe (Shinohara et al. 2014), standardising on normal-appearing white
matter, with the white matter taken from the template since the scan is already
in template space.

``zscore`` (Rieke et al. 2018): subtract the mean and divide by the standard
deviation of the voxels inside the brain mask. A darker region lowers the
brain mean and so raises every other voxel's value: the change spreads over
the whole brain.

``histogram``: piecewise-linear histogram standardisation (Nyul & Udupa 1999)
mapping the scan's in-mask percentiles :data:`LANDMARKS` onto the template's,
followed by the same z-score, so both choices give images on the same scale.

Voxels outside the mask are 0 in every case.
"""

from __future__ import annotations

import numpy as np

#: Percentile landmarks of the histogram standardisation.
LANDMARKS = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)
#: The ``--intensity-norm`` choices.
METHODS = ("whitematter", "zscore", "histogram")


def zscore(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(data - mean) / sd`` inside ``mask``, 0 outside (float32)."""
    values = data[mask].astype(np.float64)
    sd = values.std()
    out = np.zeros(data.shape, np.float32)
    out[mask] = (values - values.mean()) / (sd if sd > 0 else 1.0)
    return out


def template_white_matter(template: np.ndarray, template_mask: np.ndarray) -> np.ndarray:
    """The template's white matter: brain voxels brighter than the grey/white boundary of a T1w template.

    The boundary is found by Otsu's criterion on the template's in-brain
    intensities above their median (the upper half holds grey and white
    matter; CSF sits below it), i.e. the threshold that best separates the two
    brightest tissue classes.

    Parameters
    ----------
    template : numpy.ndarray
        Template T1w on the analysis grid.
    template_mask : numpy.ndarray
        Its brain mask (bool).

    Returns
    -------
    numpy.ndarray
        Boolean mask of the template's white matter.
    """
    values = template[template_mask].astype(np.float64)
    upper = np.sort(values[values > np.median(values)])
    # Otsu on the sorted values: the split maximising the between-class variance
    counts = np.arange(1, len(upper))
    cumulative = np.cumsum(upper)[:-1]
    mean_low = cumulative / counts
    mean_high = (upper.sum() - cumulative) / (len(upper) - counts)
    between = counts * (len(upper) - counts) * (mean_low - mean_high) ** 2
    threshold = upper[int(np.argmax(between)) + 1]
    return template_mask & (template >= threshold)


def whitematter_scale(data: np.ndarray, mask: np.ndarray, white_matter: np.ndarray) -> np.ndarray:
    """``data / median(data[white_matter & mask])`` inside ``mask``, 0 outside (float32).

    Raises
    ------
    ValueError
        When no white-matter voxel lies in ``mask`` or their median is not positive.
    """
    reference = data[white_matter & mask]
    median = float(np.median(reference)) if reference.size else 0.0
    if not median > 0:
        raise ValueError("the registered scan has no positive intensity in the template's white matter")
    out = np.zeros(data.shape, np.float32)
    out[mask] = data[mask] / median
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
    """Apply ``--intensity-norm`` (one of :data:`METHODS`) inside ``mask``.

    Parameters
    ----------
    data, mask : numpy.ndarray
        The registered scan and its brain mask (bool) on the template grid.
    method : str
        ``whitematter``, ``zscore`` or ``histogram``.
    reference, reference_mask : numpy.ndarray
        The template T1w and its brain mask on the same grid.
    """
    if method == "whitematter":
        return whitematter_scale(data, mask, template_white_matter(reference, reference_mask))
    if method == "histogram":
        data = histogram_standardise(data, mask, reference, reference_mask)
    return zscore(data, mask)
