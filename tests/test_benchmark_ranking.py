"""The ranking benchmark's maths (``benchmarks/ranking_maths.py``) on hand-built criteria tables; no cohort is run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "ranking_maths.py"
SPEC = importlib.util.spec_from_file_location("ranking_maths", PATH)
ranking_maths = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ranking_maths)

CRITERIA = pd.DataFrame({"auc": [0.9, 0.7, 0.7, np.nan], "similarity": [0.1, 0.5, 0.3, 0.2]},
                        index=["A", "B", "C", "D"])


def test_criterion_ranks_best_first_ties_averaged_missing_left_out():
    ranks = ranking_maths.criterion_ranks(CRITERIA, lower_is_better=["similarity"])
    assert ranks["auc"].tolist()[:3] == [1.0, 2.5, 2.5] and np.isnan(ranks.loc["D", "auc"])
    assert ranks["similarity"].tolist() == [1.0, 4.0, 3.0, 2.0]  # lower similarity is better
    overall = ranking_maths.overall_ranks(ranks)
    assert overall.tolist() == [1.0, 3.25, 2.75, 2.0]  # D: its one criterion only


def test_kendall_tau_is_one_for_identical_and_minus_one_for_reversed_rankings():
    first = pd.Series([1.0, 2.0, 3.0, 4.0], index=list("ABCD"))
    pairs = ranking_maths.kendall_pairs({101: first, 202: first.copy(), 303: first[::-1].rank(ascending=False)})
    tau = {(row.seed_a, row.seed_b): row.tau for row in pairs.itertuples()}
    assert tau[(101, 202)] == pytest.approx(1.0)
    assert tau[(101, 303)] == pytest.approx(-1.0) and tau[(202, 303)] == pytest.approx(-1.0)
    assert set(pairs["n_methods"]) == {4}


def test_kendall_uses_the_methods_both_seeds_rank():
    first = pd.Series([1.0, 2.0, 3.0, np.nan], index=list("ABCD"))
    second = pd.Series([1.0, 3.0, 2.0, 4.0], index=list("ABCD"))
    row = ranking_maths.kendall_pairs({1: first, 2: second}).iloc[0]
    assert row["n_methods"] == 3 and row["tau"] == pytest.approx(1 / 3)  # 2 concordant, 1 discordant pair


def test_over_seeds_mean_and_range():
    table = ranking_maths.over_seeds({1: pd.Series({"A": 1.0, "B": 2.0}), 2: pd.Series({"A": 3.0, "B": np.nan})})
    assert table.loc["A"].tolist() == [2.0, 1.0, 3.0, 2] and table.loc["B", "n_seeds"] == 1


def test_comparable_keeps_the_criteria_some_method_has_and_the_methods_that_have_them_all():
    values = CRITERIA.assign(missing=np.nan)
    table = ranking_maths.comparable(values)
    assert list(table.columns) == ["auc", "similarity"] and list(table.index) == ["A", "B", "C"]
