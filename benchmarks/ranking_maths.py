"""The ranking maths of ``benchmarks/ranking.py``: criterion ranks, the overall rank, Kendall's tau between seeds.

Pure functions on tables of criterion values (rows: methods, columns: criteria), so they are tested without a
cohort (``tests/test_benchmark_ranking.py``).

* :func:`comparable`: the part of a seed's table that can be ranked: the criteria some method has, and the
  methods that have all of them (a method left over from another run, without the seed's faithfulness or
  randomisation maps, is not ranked on the criteria it happens to have);
* :func:`criterion_ranks`: per criterion, 1 = best (highest value, or lowest for the criteria named
  lower-is-better); tied values share the mean of the ranks they span (``scipy.stats.rankdata``, ``average``);
  a method without a value for a criterion has no rank there.
* :func:`overall_ranks`: the mean of a method's criterion ranks over the criteria it has.
* :func:`kendall_pairs`: Kendall's tau-b (``scipy.stats.kendalltau``, which counts ties) between every pair of
  seeds, on the methods both seeds rank.
* :func:`over_seeds`: a per-seed quantity's mean over seeds with the range of the per-seed values.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats


def comparable(values: pd.DataFrame) -> pd.DataFrame:
    """The criteria (columns) with a value for some method, and the methods (rows) with a value for each of them."""
    present = values.loc[:, values.notna().any(axis=0)]
    return present[present.notna().all(axis=1)]


def criterion_ranks(values: pd.DataFrame, lower_is_better: Iterable[str] = ()) -> pd.DataFrame:
    """Ranks of the methods (rows) on each criterion (column) of ``values``: 1 = best, ties averaged, NaN kept."""
    lower = set(lower_is_better)
    ranks = {}
    for criterion, column in values.items():
        present = column.dropna().astype(float)
        signed = present if criterion in lower else -present
        ranks[criterion] = pd.Series(stats.rankdata(signed.to_numpy(), method="average"), index=present.index
                                     ).reindex(values.index)
    return pd.DataFrame(ranks, index=values.index, columns=values.columns)


def overall_ranks(ranks: pd.DataFrame) -> pd.Series:
    """The mean criterion rank of each method over the criteria it has a rank for (NaN: none)."""
    return ranks.mean(axis=1, skipna=True)


def kendall_pairs(rankings: Mapping[object, pd.Series]) -> pd.DataFrame:
    """Kendall's tau-b between every pair of seeds' rankings (one row per pair: ``seed_a``, ``seed_b``, ``tau``,
    ``n_methods``); the methods both rank (non-NaN), tau NaN with fewer than two or a constant ranking."""
    rows = []
    for (a, first), (b, second) in itertools.combinations(rankings.items(), 2):
        both = pd.concat([first, second], axis=1, join="inner").dropna()
        tau = np.nan
        if len(both) >= 2 and both.iloc[:, 0].nunique() > 1 and both.iloc[:, 1].nunique() > 1:
            tau = float(stats.kendalltau(both.iloc[:, 0], both.iloc[:, 1]).statistic)
        rows.append({"seed_a": a, "seed_b": b, "tau": tau, "n_methods": len(both)})
    return pd.DataFrame(rows, columns=["seed_a", "seed_b", "tau", "n_methods"])


def over_seeds(per_seed: Mapping[object, pd.Series]) -> pd.DataFrame:
    """Per method: the mean over seeds of a quantity and the range of its per-seed values (``mean``, ``low``,
    ``high``, ``n_seeds``: the seeds that have it)."""
    table = pd.DataFrame(dict(per_seed))
    return pd.DataFrame({"mean": table.mean(axis=1), "low": table.min(axis=1), "high": table.max(axis=1),
                         "n_seeds": table.notna().sum(axis=1)})
