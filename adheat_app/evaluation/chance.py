"""Chance levels of the overlap metrics: what a map unrelated to the reference scores.

For a reference covering a share ``p`` of the brain voxels and a relevance map
whose ranking of voxels is independent of the reference (a random map), the
expected values are (exact in expectation for a random ranking of the voxels):

* ``overlap_fraction`` at any top-``k``: ``p`` (the top voxels are a random
  sample of the brain);
* ``dice`` at top fraction ``k``: ``2 k p / (k + p)`` (``|T & R| = k V p`` on
  average, ``|T| + |R| = (k + p) V``), where ``k = K / V`` is the share of the
  set actually used: ``K = ceil(k% V)`` voxels, ties broken at random
  (:mod:`.overlap`);
* ``roc_auc``: 0.5;
* ``average_precision``: ``p`` (precision is ``p`` at every threshold);
* ``mass_inside``: ``p`` (relevance spread independently of the reference);
* ``rank_accuracy``: ``p`` (the top ``|R|`` voxels are a random sample of the brain);
* ``spearman``: 0.
"""

from __future__ import annotations

import numpy as np

from adheat_app.evaluation.overlap import TOP_PERCENT, top_count


def chance_levels(share: float, n_voxels: int, percents=TOP_PERCENT) -> dict[str, np.ndarray | float]:
    """Expected value of every overlap metric for a map unrelated to a reference.

    Parameters
    ----------
    share : float
        The reference's share ``p`` of brain voxels (binary reference voxels / brain voxels).
    n_voxels : int
        Brain voxels ``V`` (the top-``k`` sets hold ``ceil(k% V)`` of them).
    percents : sequence of float
        Top-``k`` percentages of the ``dice`` and ``overlap_fraction`` entries.

    Returns
    -------
    dict
        ``dice`` and ``overlap_fraction`` per ``k`` (arrays), the other metrics as floats.
    """
    k = np.array([top_count(n_voxels, percent) / n_voxels for percent in percents], dtype=np.float64)
    p = float(share)
    dice = np.divide(2.0 * k * p, k + p, out=np.zeros_like(k), where=(k + p) > 0)
    return {"dice": dice, "overlap_fraction": np.full(k.shape, p), "roc_auc": 0.5, "average_precision": p,
            "mass_inside": p, "rank_accuracy": p, "spearman": 0.0}
