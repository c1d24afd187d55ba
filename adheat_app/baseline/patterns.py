"""Activation patterns of linear models (Haufe et al. 2014), without a voxel-by-voxel covariance.

A linear classifier's weight vector ``w`` says how to *combine* voxels to
decode the class; it is not a map of where the class differences are (a weight
can be large on a voxel that only cancels noise). Haufe et al. (2014) turn it
into the corresponding forward-model *activation pattern*
``A = cov(X) w / var(w^T x)``. With ``p`` voxels and ``n << p`` samples, the
``p x p`` covariance is never formed: ``cov(X) w = Xc^T (Xc w) / (n - 1)``,
two matrix-vector products, ``O(n p)`` time and no memory beyond ``X``.
"""

from __future__ import annotations

import numpy as np


def activation_pattern(features: np.ndarray, weights: np.ndarray, scale: bool = False) -> np.ndarray:
    """Activation pattern ``cov(X) w`` of a linear model.

    Parameters
    ----------
    features : numpy.ndarray
        Samples by features ``X`` (``n x p``), the data the model was fit on.
    weights : numpy.ndarray
        Weight vector ``w`` (length ``p``).
    scale : bool
        Divide by the variance of the model output ``w^T x`` over the samples
        (Haufe et al. 2014, eq. 6, for one output), which makes patterns of
        models with different weight norms (e.g. different SVM ``C``) comparable.

    Returns
    -------
    numpy.ndarray
        The pattern (length ``p``, float64).
    """
    x = np.asarray(features)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    w = np.asarray(weights, dtype=x.dtype).ravel()
    n = x.shape[0]
    if n < 2:
        raise ValueError("an activation pattern needs at least 2 samples")
    # Xc w = X w - (mean(X) . w); Xc^T v = X^T v for any v summing to zero: no centred copy of X.
    output = (x @ w).astype(np.float64)
    output -= output.mean()
    pattern = (x.T @ output.astype(x.dtype)).astype(np.float64) / (n - 1)
    if scale:
        variance = float(output @ output) / (n - 1)
        if variance > 0:
            pattern /= variance
    return pattern
