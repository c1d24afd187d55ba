"""Chance levels of the overlap metrics: what a map unrelated to the reference scores.

For a reference covering a share ``p`` of the brain voxels and a relevance map
whose ranking of voxels is independent of the reference (a random map), the
expected values are (exact in expectation for a random ranking of the voxels):

* ``overlap_fraction`` at any top-``k``: ``p`` (the top voxels are a random
  sample of the brain);
* ``dice`` at top fraction ``k``: ``2 k p / (k + p)`` (``|T & R| = k V p`` on
  average, ``|T| + |R| = (k + p) V``);
* ``roc_auc``: 0.5;
* ``average_precision``: ``p`` (precision is ``p`` at every threshold);
* ``mass_inside``: ``p`` (relevance spread independently of the reference);
* ``spearman``: 0.
"""

from __future__ import annotations

import numpy as np

from adheat_app.evaluation.overlap import TOP_PERCENT


def chance_levels(share: float, percents=TOP_PERCENT) -> dict[str, np.ndarray | float]:
    """Expected value of every overlap metric for a map unrelated to a reference.

    Parameters
    ----------
    share : float
        The reference's share ``p`` of brain voxels (binary reference voxels / brain voxels).
    percents : sequence of float
        Top-``k`` percentages of the ``dice`` and ``overlap_fraction`` entries.

    Returns
    -------
    dict
        ``dice`` and ``overlap_fraction`` per ``k`` (arrays), the other metrics as floats.
    """
    k = np.asarray(percents, dtype=np.float64) / 100.0
    p = float(share)
    dice = np.divide(2.0 * k * p, k + p, out=np.zeros_like(k), where=(k + p) > 0)
    return {"dice": dice, "overlap_fraction": np.full(k.shape, p), "roc_auc": 0.5, "average_precision": p,
            "mass_inside": p, "spearman": 0.0}
