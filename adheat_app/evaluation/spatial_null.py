"""A spatial null for overlap scores: random maps as smooth as the map scored, with its values.

Chance 0.5 (ROC AUC) is the expected score of a map whose voxels are ranked
independently of the reference. Heatmaps are spatially smooth, so their scores
against a compact reference spread far more around chance than a voxel-wise
random ranking's: a smooth map unrelated to the reference reaches 0.6 easily.
The null of :func:`spatial_null` keeps what a smooth unrelated map has:

1. the map's smoothness: the FWHM per axis (in voxels) from the correlation
   ``rho`` of neighbouring voxels of its rank-normalised values inside the
   mask, ``sigma^2 = -1 / (4 ln rho)`` for a Gaussian kernel of standard
   deviation ``sigma`` applied to white noise (:func:`smoothness`);
2. surrogates: white noise on the analysis grid smoothed by that Gaussian,
   inside the brain mask, given the map's own values by rank (same histogram,
   same exact zeros, same smoothness; its location is random);
3. each surrogate scored like the map; the null's mean and standard deviation
   give ``z = (value - mean) / sd`` and a two-sided normal p-value (the
   scores of many voxels are close to normal), so a few hundred surrogates
   are enough for the small p-values a Holm-corrected family needs.

The surrogates are stationary: they keep the map's smoothness, not its
preference for grey matter or for the brain's edge (the controls test that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.ndimage import gaussian_filter

from adheat_app.evaluation.overlap import sorted_metrics

#: Surrogates scored per batch.
BATCH = 16
FWHM_PER_SIGMA = float(np.sqrt(8 * np.log(2)))


@dataclass(frozen=True)
class NullScores:
    """One map's spatial null against one reference, for one metric.

    Attributes
    ----------
    mean, sd : float
        Mean and standard deviation of the surrogates' scores.
    z : float
        ``(value - mean) / sd``.
    p : float
        Two-sided normal p-value of ``z``.
    """

    mean: float
    sd: float
    z: float
    p: float


def smoothness(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gaussian kernel FWHM per axis, in voxels, of a map ``values`` (brain voxels) on ``mask``'s grid.

    The values are replaced by normal scores of their ranks (ties averaged) so that
    a skewed map and its surrogates are measured alike; pairs of neighbours
    along an axis count when both lie in the mask.
    """
    ranks = stats.rankdata(values)
    volume = np.zeros(mask.shape)
    volume[mask] = stats.norm.ppf(ranks / (len(values) + 1))
    fwhm = []
    for axis in range(3):
        a = np.moveaxis(volume, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        both = m[1:] & m[:-1]
        first, second = a[:-1][both], a[1:][both]
        rho = float(np.corrcoef(first, second)[0, 1]) if both.sum() > 2 else 0.0
        sigma = float(np.sqrt(-1.0 / (4.0 * np.log(rho)))) if 0.0 < rho < 1.0 else 0.0
        fwhm.append(sigma * FWHM_PER_SIGMA)
    return np.asarray(fwhm)


def surrogates(values: np.ndarray, mask: np.ndarray, fwhm: np.ndarray, n: int, seed: int):
    """Batches ``(b, V)`` of ``n`` smooth surrogates holding ``values``' sorted values by rank."""
    rng = np.random.default_rng(seed)
    ordered = np.sort(np.asarray(values, dtype=np.float32))
    sigma = np.asarray(fwhm, dtype=np.float64) / FWHM_PER_SIGMA
    for start in range(0, n, BATCH):
        batch = np.empty((min(BATCH, n - start), len(ordered)), dtype=np.float32)
        for row in batch:
            field = gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), sigma, mode="wrap")
            row[np.argsort(field[mask], kind="stable")] = ordered
        yield batch


def spatial_null(values: np.ndarray, mask: np.ndarray, references: list[np.ndarray], observed: list[float],
                 metric: str, n: int, seed: int) -> list[NullScores]:
    """The spatial null of one map against every reference (see the module docstring).

    Parameters
    ----------
    values : numpy.ndarray
        The map scored, brain voxels ``(V,)``.
    mask : numpy.ndarray
        Brain mask on the analysis grid (bool), which ``values`` is indexed by.
    references : list of numpy.ndarray
        Binary references ``(V,)``.
    observed : list of float
        The map's score against each reference.
    metric : str
        A metric of :func:`adheat_app.evaluation.overlap.sorted_metrics` without top-k.
    n : int
        Surrogates.
    seed : int
        Seed of the surrogates.
    """
    fwhm = smoothness(values, mask)
    scores: list[list[np.ndarray]] = [[] for _ in references]
    for batch in surrogates(values, mask, fwhm, n, seed):
        for collected, metrics in zip(scores, sorted_metrics(batch, references)):
            collected.append(metrics[metric])
    out = []
    for collected, value in zip(scores, observed):
        null = np.concatenate(collected)
        mean, sd = float(np.mean(null)), float(np.std(null, ddof=1))
        z = (value - mean) / sd if sd > 0 else float("nan")
        out.append(NullScores(mean, sd, z, float(2 * stats.norm.sf(abs(z))) if np.isfinite(z) else float("nan")))
    return out


def spatial_nulls(maps: dict[str, np.ndarray], mask: np.ndarray, references: list[np.ndarray], names: list[str],
                  observed: dict[tuple[str, str], float], metric: str, n: int, seed: int
                  ) -> dict[tuple[str, str], tuple[float, float, float]]:
    """:func:`spatial_null` of several maps: ``(map, reference)`` to the null's mean, SD and p-value.

    ``observed`` holds each map's score per reference name; no null (an empty dict) with fewer than 2 surrogates.
    """
    out: dict[tuple[str, str], tuple[float, float, float]] = {}
    if n < 2:
        return out
    for i, (method, values) in enumerate(sorted(maps.items())):
        nulls = spatial_null(values, mask, references, [observed[(method, name)] for name in names], metric, n,
                             seed + i)
        out.update({(method, name): (null.mean, null.sd, null.p) for name, null in zip(names, nulls)})
    return out

