"""Overlap of relevance maps with a binary reference, with bootstrap confidence intervals over subjects.

For a relevance map ``m`` (non-negative, brain voxels only) and a binary
reference ``R`` (plus its continuous values ``r``):

* ``dice`` and ``overlap_fraction`` at the top ``k`` % of brain voxels
  (:data:`TOP_PERCENT`): ``T`` = the ``K = ceil(k/100 * V)`` voxels of highest
  relevance; Dice ``2 |T & R| / (K + |R|)``, overlap fraction ``|T & R| / K``.
  Voxels tied at the ``K``-th largest value (maps with many exact zeros) are
  broken at random, in expectation: the tied voxels fill the places left
  above the tie, each counting ``|tied & R| / |tied|`` inside ``R``, so ``T``
  always holds ``K`` voxels and the chance level of :mod:`.chance` is that of
  the set actually used;
* ``roc_auc``: probability that a reference voxel outranks a non-reference
  voxel (Mann-Whitney, ties counted half);
* ``average_precision``: mean over reference voxels of the precision at their
  relevance (tied values share one threshold, as in scikit-learn);
* ``mass_inside``: fraction of the total relevance inside ``R`` (relevance mass accuracy, Arras et al. 2022);
* ``rank_accuracy``: relevance rank accuracy (Arras et al. 2022): the share of
  the ``K = |R|`` voxels of highest relevance that lie in ``R`` (ties at the
  ``K``-th value broken at random in expectation, as for the top-``k`` sets);
* ``spearman``: rank correlation of ``m`` with the continuous ``r``.

:func:`resample_counts` draws the bootstrap resamples of subjects (with
replacement; the sessions of a subject are drawn together) once per group of scans, and :func:`repeat_draws`
the repeat of ``--repeats`` each resample scores; :func:`bootstrap` turns them into the
mean map of each resample (one matrix product, weights x maps) and
:func:`score_resamples` scores resample maps with one sort each, in batches.
Every map scored on the same weights is scored on the same resamples, so
differences between maps have paired intervals (:mod:`.intervals`). The Spearman correlation needs
the rank of every voxel per resample and is reported without interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

TOP_PERCENT: tuple[float, ...] = (1.0, 5.0, 10.0, 20.0)
#: Metrics with a confidence interval from :func:`bootstrap`.
BOOTSTRAPPED = ("dice", "overlap_fraction", "roc_auc", "average_precision", "mass_inside", "rank_accuracy")
BATCH = 32


def top_count(n_voxels: int, percent: float) -> int:
    """Voxels ``K = ceil(k% V)`` (at least 1) in the top-``k`` % set of a map of ``n_voxels`` voxels."""
    return max(1, math.ceil(percent / 100.0 * n_voxels))


def sorted_metrics(maps: np.ndarray, references: list[np.ndarray],
                   percents=TOP_PERCENT) -> list[dict[str, np.ndarray]]:
    """Every bootstrapped metric for each row of ``maps`` against each reference (one sort per row).

    Parameters
    ----------
    maps : numpy.ndarray
        Relevance maps, ``(b, V)`` (brain voxels).
    references : list of numpy.ndarray
        Binary references, each ``(V,)`` bool.
    percents : sequence of float
        Top-``k`` percentages.

    Returns
    -------
    list of dict
        Per reference: ``dice`` and ``overlap_fraction`` of shape ``(b, len(percents))``;
        ``roc_auc``, ``average_precision``, ``mass_inside`` and ``rank_accuracy`` of shape ``(b,)``.
    """
    maps = np.atleast_2d(maps)
    n_rows, n_voxels = maps.shape
    ordered = np.sort(maps, axis=1)
    counts = [top_count(n_voxels, p) for p in percents]
    thresholds = ordered[:, [n_voxels - c for c in counts]]
    at_least = np.stack([n_voxels - np.searchsorted(ordered[i], thresholds[i], side="left") for i in range(n_rows)])
    above = np.stack([n_voxels - np.searchsorted(ordered[i], thresholds[i], side="right") for i in range(n_rows)])
    top = np.asarray(counts, dtype=np.float64)
    # share of the tied voxels' places that fall inside the top K (random tie-breaking, in expectation)
    fill = (top - above) / (at_least - above)
    total = maps.sum(axis=1)
    results = []
    for reference in references:
        reference = np.asarray(reference, dtype=bool)
        n_pos = int(reference.sum())
        n_neg = n_voxels - n_pos
        inside = np.empty((n_rows, len(percents)))
        auc = np.full(n_rows, np.nan)
        precision = np.full(n_rows, np.nan)
        rank = np.full(n_rows, np.nan)
        for i in range(n_rows):
            positives = np.sort(maps[i, reference])
            tied_in = (np.searchsorted(positives, thresholds[i], side="right")
                       - np.searchsorted(positives, thresholds[i], side="left"))
            inside[i] = n_pos - np.searchsorted(positives, thresholds[i], side="right") + fill[i] * tied_in
            if n_pos and n_neg:
                left = np.searchsorted(ordered[i], positives, side="left")
                right = np.searchsorted(ordered[i], positives, side="right")
                rank_sum = float(np.sum((left + right + 1) / 2.0))
                auc[i] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
                at_least_pos = n_pos - np.searchsorted(positives, positives, side="left")
                precision[i] = float(np.mean(at_least_pos / (n_voxels - left)))
            if n_pos:
                rank[i] = _top_inside(ordered[i], positives, n_pos) / n_pos
        mass = np.where(total > 0, maps[:, reference].sum(axis=1) / np.where(total > 0, total, 1), np.nan)
        results.append({"dice": 2.0 * inside / (top + n_pos), "overlap_fraction": inside / top, "roc_auc": auc,
                        "average_precision": precision, "mass_inside": mass, "rank_accuracy": rank})
    return results


def _top_inside(ordered: np.ndarray, positives: np.ndarray, count: int) -> float:
    """Expected reference voxels among the ``count`` highest values of a map (ties at the cut broken at random).

    ``ordered``: the map's values sorted ascending; ``positives``: its values in the reference, sorted ascending.
    """
    n_voxels = len(ordered)
    threshold = ordered[n_voxels - count]
    above = n_voxels - np.searchsorted(ordered, threshold, side="right")
    tied = n_voxels - np.searchsorted(ordered, threshold, side="left") - above
    above_in = len(positives) - np.searchsorted(positives, threshold, side="right")
    tied_in = len(positives) - np.searchsorted(positives, threshold, side="left") - above_in
    return float(above_in + (count - above) / tied * tied_in)


def overlap_metrics(relevance: np.ndarray, reference: np.ndarray, reference_values: np.ndarray,
                    percents=TOP_PERCENT) -> dict[str, np.ndarray | float]:
    """Every metric of one relevance map (see the module docstring).

    Parameters
    ----------
    relevance : numpy.ndarray
        Relevance per brain voxel ``(V,)`` (absolute values are used).
    reference : numpy.ndarray
        Binary reference ``(V,)``.
    reference_values : numpy.ndarray
        Continuous reference ``(V,)`` for the Spearman correlation.
    """
    relevance = np.abs(np.asarray(relevance, dtype=np.float64))
    out = {k: v[0] for k, v in sorted_metrics(relevance[None], [reference], percents)[0].items()}
    out["spearman"] = float(stats.spearmanr(relevance, reference_values).statistic) \
        if np.ptp(relevance) > 0 and np.ptp(reference_values) > 0 else float("nan")
    return out


def resample_counts(subjects: Sequence[str], n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap resamples of subjects, as counts per scan ``(n_resamples, n_scans)`` (float64).

    The subjects are drawn with replacement (as many draws as subjects); each
    scan counts as often as its subject was drawn, so the sessions of one
    subject enter or leave a resample together.

    Parameters
    ----------
    subjects : sequence of str
        Subject of each scan of the group (repeated for several sessions).
    n_resamples : int
        Number of resamples (0: none).
    seed : int
        Seed of the resampling.
    """
    names, index = np.unique(np.asarray(subjects, dtype=str), return_inverse=True)
    rng = np.random.default_rng(seed)
    n = len(names)
    counts = np.zeros((n_resamples, n))
    if n_resamples and n:
        draws = rng.integers(0, n, size=(n_resamples, n))
        np.add.at(counts, (np.repeat(np.arange(n_resamples), n), draws.ravel()), 1.0)
    return counts[:, index.ravel()]


def repeat_draws(n_resamples: int, n_repeats: int, seed: int) -> np.ndarray:
    """The repeat of the cross-validation (``--repeats``) each of ``n_resamples`` resamples scores, ``(n_resamples,)``.

    Drawn uniformly by a generator of its own (``[seed, 1]``, as the verdict's
    :func:`adheat_app.training.metrics.chance_verdict`), so the resamples of subjects drawn with ``seed`` stay
    those of a single repeat; all 0 with one repeat.
    """
    if n_repeats <= 1:
        return np.zeros(n_resamples, dtype=int)
    return np.random.default_rng([seed, 1]).integers(n_repeats, size=n_resamples)


def score_resamples(batches: Iterable[np.ndarray], references: list[np.ndarray],
                    percents=TOP_PERCENT) -> list[dict[str, np.ndarray]]:
    """Metrics of resample maps given in batches ``(b, V)``; per reference, as :func:`sorted_metrics`, stacked."""
    results: list[dict[str, list[np.ndarray]]] = [{k: [] for k in BOOTSTRAPPED} for _ in references]
    for batch in batches:
        for collected, metrics in zip(results, sorted_metrics(batch, references, percents)):
            for key, value in metrics.items():
                collected[key].append(value)
    return [{k: np.concatenate(v) if v else np.empty((0,)) for k, v in collected.items()} for collected in results]


def bootstrap(maps: np.ndarray, references: list[np.ndarray], counts: np.ndarray,
              percents=TOP_PERCENT) -> list[dict[str, np.ndarray]]:
    """Metrics of the mean map of each resample of subjects.

    Parameters
    ----------
    maps : numpy.ndarray
        Per-subject relevance maps ``(n, V)`` (non-negative, float32).
    references : list of numpy.ndarray
        Binary references, each ``(V,)``.
    counts : numpy.ndarray
        How often each subject is drawn in each resample, ``(n_resamples, n)``
        (:func:`resample_counts`, or its columns of the subjects ``maps`` has).
        A resample that draws none of them scores NaN.

    Returns
    -------
    list of dict
        Per reference, as :func:`sorted_metrics`, one row per resample.
    """
    totals = counts.sum(axis=1, keepdims=True)
    weights = (counts / np.where(totals > 0, totals, np.nan)).astype(np.float32)

    def batches():
        for start in range(0, len(weights), BATCH):
            yield np.nan_to_num(weights[start:start + BATCH]) @ maps

    scored = score_resamples(batches(), references, percents)
    empty = totals[:, 0] == 0
    if empty.any():
        for metrics in scored:
            for value in metrics.values():
                value[empty] = np.nan
    return scored
