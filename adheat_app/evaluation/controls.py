"""Control maps scored exactly like the heatmap methods, and the SVM pattern's bootstrap.

A heatmap method "finds" a reference only if it beats maps that know nothing
about the model:

* ``InputMagnitude``: each scan's absolute preprocessed intensity (the CNN's
  input) inside the brain mask, normalised to unit total like a heatmap and
  averaged over the same groups of scans. Input-proportional methods
  (Integrated Gradients with a zero baseline, LRP) inherit the input's
  structure, so the input itself is the control they must beat.
* ``GreyMatterPrior``: the template's grey-matter probability map
  (:func:`grey_matter_prior`; one map, the same for every resample). Atrophy references lie in grey matter, so any
  grey-matter-shaped map scores above chance.

The SVM activation pattern (Haufe et al. 2014) is one map per fold; its
interval comes from :func:`svm_pattern_resamples`: the pattern
``cov(Z) w / var(w'z)`` recomputed on each bootstrap resample of the scans,
with the fold-mean weight vector ``w`` held fixed (the SVM is not refit) and
the features ``Z`` z-scored per voxel once over all scans.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from adheat_app.evaluation.overlap import BATCH
from adheat_app.layout import MapName
from adheat_app.templates import Template, resample

INPUT_MAGNITUDE = "InputMagnitude"
GREY_MATTER_PRIOR = "GreyMatterPrior"


def is_control(method: str) -> bool:
    """Whether ``method`` names a control map rather than an explanation of the trained model."""
    return method in (INPUT_MAGNITUDE, GREY_MATTER_PRIOR) or MapName.parse(method).is_control


def unit_total(maps: np.ndarray) -> np.ndarray:
    """Absolute maps ``(n, V)`` each divided by its total (rows summing to 0 stay 0), float32."""
    values = np.abs(np.asarray(maps, dtype=np.float32))
    totals = values.sum(axis=1, dtype=np.float64, keepdims=True)
    return (values / np.where(totals > 0, totals, 1.0)).astype(np.float32)


def grey_matter_prior(template: Template) -> tuple[np.ndarray, str]:
    """Grey-matter probability inside the brain mask ``(V,)`` and where it comes from.

    The template's own grey-matter map when it has one (TemplateFlow's
    ``label-GM_probseg``); otherwise nilearn's ICBM152 2009a grey-matter
    template (shipped with nilearn), resampled linearly onto the analysis grid.
    """
    mask = template.mask_array()
    if template.gm is not None:
        return np.asarray(template.gm.dataobj, dtype=np.float64)[mask], f"{template.space} label-GM probseg"
    from nilearn import datasets

    gm = resample(datasets.load_mni152_gm_template(resolution=1), template.shape, template.affine)
    return (np.clip(np.asarray(gm.dataobj, dtype=np.float64), 0, 1)[mask],
            "nilearn MNI152 2009a grey-matter template (load_mni152_gm_template)")


def svm_pattern_resamples(features: np.ndarray, weights: np.ndarray, counts: np.ndarray, channels: int = 1
                          ) -> Iterator[np.ndarray]:
    """Absolute, unit-total activation patterns of bootstrap resamples, in batches ``(b, V)``.

    Parameters
    ----------
    features : numpy.ndarray
        Scans by voxels ``Z`` (float32), z-scored per voxel over all scans.
    weights : numpy.ndarray
        Weight vector ``w`` ``(V,)`` (the fold-mean SVM weights), held fixed.
    counts : numpy.ndarray
        Resample counts ``(n_resamples, n)`` (:func:`adheat_app.evaluation.overlap.resample_counts`).
    channels : int
        Input channels: the features are ``channels`` blocks of equal length (one per channel), and a
        pattern is the sum of its blocks.

    Yields
    ------
    numpy.ndarray
        For each resample with weights ``c`` (counts / n): ``|sum_i c_i (s_i - s_c) z_i| / var_c(s)``
        normalised to unit total, where ``s = Z w`` and ``s_c``, ``var_c`` are the weighted mean and
        variance of ``s``; the mean of ``z`` drops out because the coefficients sum to 0.
    """
    output = (features @ np.asarray(weights, dtype=features.dtype)).astype(np.float64)
    for start in range(0, len(counts), BATCH):
        c = counts[start:start + BATCH]
        c = c / c.sum(axis=1, keepdims=True)
        centred = output[None, :] - (c @ output)[:, None]
        coefficients = c * centred
        variance = np.sum(coefficients * centred, axis=1, keepdims=True)
        patterns = (coefficients.astype(np.float32) @ features) / np.where(variance > 0, variance, 1.0)
        yield unit_total(patterns.reshape(len(patterns), channels, -1).sum(axis=1))
