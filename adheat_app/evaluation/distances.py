"""Distances between the mean maps of methods (Rieke et al. 2018, Table 2).

Each mean map (absolute relevance inside the brain mask; the SVM pattern in
absolute value) is scaled to unit Euclidean norm, so that the Euclidean
distance ``||a/|a| - b/|b|||`` compares shapes, not scales, and lies in
``[0, sqrt(2)]`` for non-negative maps. ``correlation_distance`` is
``1 - Pearson r`` of the two maps over brain voxels (0: identical up to an
affine change of scale, 1: uncorrelated).
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def map_distances(maps: dict[str, np.ndarray]) -> pd.DataFrame:
    """Euclidean and correlation distance of every pair of maps.

    Parameters
    ----------
    maps : dict of str to numpy.ndarray
        Map per method, over the same voxels.

    Returns
    -------
    pandas.DataFrame
        Columns ``method_a``, ``method_b``, ``euclidean``, ``correlation_distance``.
    """
    unit = {}
    for name, values in maps.items():
        values = np.abs(np.asarray(values, dtype=np.float64))
        norm = np.linalg.norm(values)
        unit[name] = values / norm if norm > 0 else values
    rows = []
    for a, b in itertools.combinations(sorted(unit), 2):
        if np.ptp(unit[a]) > 0 and np.ptp(unit[b]) > 0:
            correlation = float(np.corrcoef(unit[a], unit[b])[0, 1])
        else:
            correlation = float("nan")
        rows.append({"method_a": a, "method_b": b, "euclidean": float(np.linalg.norm(unit[a] - unit[b])),
                     "correlation_distance": 1.0 - correlation})
    return pd.DataFrame(rows, columns=["method_a", "method_b", "euclidean", "correlation_distance"])


def distance_matrix(table: pd.DataFrame, column: str = "euclidean") -> pd.DataFrame:
    """Square symmetric matrix of one distance column (zeros on the diagonal)."""
    names = sorted(set(table["method_a"]) | set(table["method_b"]))
    matrix = pd.DataFrame(0.0, index=names, columns=names)
    for row in table.itertuples(index=False):
        value = getattr(row, column)
        matrix.loc[row.method_a, row.method_b] = value
        matrix.loc[row.method_b, row.method_a] = value
    return matrix
