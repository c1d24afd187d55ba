"""Bootstrap inference on overlap scores: a bias-corrected estimate, the basic interval that contains it, p-values.

An overlap score of a group mean map is a rank statistic of a *mean*: a
bootstrap resample repeats some subjects and leaves out others, so its mean
map is noisier than the map of all subjects and its rank metrics (ROC AUC,
Dice of the top voxels) are biased, mostly downwards. Percentile intervals
of such resamples sit below the value they should bracket, at times
excluding it. The *basic* bootstrap (Davison & Hinkley 1997, eq. 5.6) pivots
on the resamples' departure from the full-sample value instead:

* ``estimate = 2 t - median(t*)``: the full-sample value ``t`` corrected by the
  bootstrap's median bias ``median(t*) - t``;
* interval ``[2 t - q(1 - a/2), 2 t - q(a/2)]`` with ``q`` the quantiles of the
  resamples ``t*``.

The estimate always lies inside the interval (the median lies between the
two quantiles), for the maps, their paired differences and the SVM pattern
alike. Estimates and bounds are clipped to the metric's range. A map that
does not depend on the resample (the grey-matter prior) gets its value and a
zero-width interval.

With ``--repeats`` each resample scores one repeat's maps (:mod:`.scoring`):
``t`` is the mean of the repeats' values ``t_r`` and a resample departs from
``t`` by its subjects' deviation ``t* - t_r`` plus its repeat's ``t_r - t``.
The interval is the basic one of those departures, as above; the repeat term
has mean 0 over the repeats and is no bias, so the estimate corrects ``t``
by the median of the subjects' deviations only (``centres``: the ``t_r`` of
each resample's repeat), ``t - median(t* - t_r)``. The median of a mixture of
a few repeats' resamples (``2 t - median(t*)``) would jump to whichever repeat
holds the middle resample. That estimate lies inside the interval whenever at
least 2.5 % of the resamples fall on either side of it, which at least half of a
repeat's resamples do for fewer than 20 repeats; it is clipped into the interval
otherwise. :func:`two_sided_p` is the p-value that agrees with the
interval (``p < 1 - level`` when the interval excludes 0), and :func:`holm`
adjusts a family of p-values (Holm 1979).
"""

from __future__ import annotations

import numpy as np

#: Coverage of every interval.
LEVEL = 0.95


def basic_interval(point, samples: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0), level: float = LEVEL,
                   centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bias-corrected estimate and basic bootstrap interval (see the module docstring).

    Parameters
    ----------
    point : float or numpy.ndarray
        The full-sample value(s) ``t``.
    samples : numpy.ndarray
        Resample values ``(n_resamples, *shape of point)``; NaN rows (empty resamples) are ignored.
    bounds : tuple of float
        Range of the statistic (``(-1, 1)`` for differences of metrics in [0, 1]).
    level : float
        Coverage of the interval.
    centres : numpy.ndarray, optional
        With several repeats: the value ``t_r`` of the repeat each resample scored, shaped as ``samples``; the
        estimate is then ``t - median(t* - t_r)``, kept inside the interval (see the module docstring).

    Returns
    -------
    tuple of numpy.ndarray
        ``estimate``, ``low``, ``high``; without usable resamples the point value and NaN bounds.
    """
    point = np.asarray(point, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    usable = len(samples) > 0 and bool(np.isfinite(samples).any())
    if not usable:
        nan = np.full(point.shape, np.nan)
        return point.copy(), nan, nan.copy()
    alpha = (1.0 - level) / 2.0
    median, q_low, q_high = np.nanquantile(samples, [0.5, alpha, 1.0 - alpha], axis=0)
    low, high = bounds
    lower, upper = np.clip(2 * point - q_high, low, high), np.clip(2 * point - q_low, low, high)
    if centres is None:
        return np.clip(2 * point - median, low, high), lower, upper
    bias = np.nanmedian(samples - np.asarray(centres, dtype=np.float64), axis=0)
    return np.clip(np.clip(point - bias, low, high), lower, upper), lower, upper


def two_sided_p(point, samples: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "the statistic is 0", consistent with :func:`basic_interval`.

    The basic interval at level ``1 - a`` excludes 0 when fewer than ``a/2``
    of the resamples lie beyond ``2 t`` on either side; the p-value is twice the
    smaller of those two shares, ``(1 + count) / (1 + n)`` (never 0), at most 1.
    NaN without resamples.
    """
    point = np.asarray(point, dtype=np.float64)
    samples = np.asarray(samples, dtype=np.float64)
    finite = np.isfinite(samples)
    n = finite.sum(axis=0)
    if len(samples) == 0 or not np.any(n):
        return np.full(point.shape, np.nan)
    pivot = 2 * point
    above = np.sum(finite & (samples >= pivot), axis=0)
    below = np.sum(finite & (samples <= pivot), axis=0)
    p = 2 * (1.0 + np.minimum(above, below)) / (1.0 + n)
    return np.where(n > 0, np.minimum(p, 1.0), np.nan)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control; NaN entries stay NaN, excluded from the family)."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted
