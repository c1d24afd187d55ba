"""The twin test: regions taken from a scan's atrophy-free twin, on a hand-built model and a simulated cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from adheat_app.attribution.base import MethodContext
from adheat_app.evaluation.twin_test import (
    MIN_EFFECT, RANDOM, TRUTH, random_regions, region_shares, share_table, top_region,
)
from conftest import make_preprocessed_cohort, tree_digest
from test_faithfulness import RegionSum  # logits (0, sum of input x weights): differences add up

GRID = (8, 10, 8)


def test_the_true_region_as_top_region_recovers_the_whole_difference():
    """Scan and twin differ only inside the true region: a map whose top region is that region recovers a share
    of 1, as the region itself does; a region away from it recovers 0, half of it its part; a tiny effect has no
    share."""
    rng = np.random.default_rng(0)
    weights = rng.uniform(0.5, 1.5, (2, *GRID))
    model = RegionSum(weights).eval()
    context = MethodContext(4.0, "MNI152NLin2009cAsym", 4, 0, torch.device("cpu"))
    brain = np.ones(GRID, bool)
    truth = np.zeros(GRID, bool)
    truth[2:5, 3:6, 2:5] = True
    twin = torch.from_numpy(rng.uniform(0.5, 1.5, (2, *GRID)).astype(np.float32))
    scan = torch.where(torch.from_numpy(truth), twin + 0.3, twin)  # the disease: brighter inside the region only
    relevance = truth + 0.1 * rng.random(GRID)
    top = top_region(relevance, brain, int(truth.sum()))
    assert np.array_equal(top, truth)
    half = truth & (np.arange(GRID[0]) < 3)[:, None, None]
    away = np.zeros(GRID, bool)
    away[6:, 7:, 5:] = True
    effect, shares = region_shares(model, scan, twin, [top, truth, away, half], context)
    expected = 0.3 * weights[:, truth].sum()
    np.testing.assert_allclose(effect, expected, rtol=1e-5)
    np.testing.assert_allclose(shares, [1.0, 1.0, 0.0, weights[:, half].sum() / weights[:, truth].sum()], atol=1e-5)
    _, undefined = region_shares(model, twin + 0.1 * MIN_EFFECT / weights.sum(), twin, [truth], context)
    assert np.isnan(undefined).all()


def test_random_regions_are_compact_seeded_grey_matter_regions_of_the_size():
    grey = np.zeros((20, 20, 20), bool)
    grey[2:18, 2:18, 5:9] = True
    regions = random_regions(grey, 30, 5, np.random.default_rng(3))
    assert len(regions) == 5 and all(r.sum() == 30 and not (r & ~grey).any() for r in regions)
    assert all(np.ptp(np.argwhere(r), axis=0).max() <= 6 for r in regions)  # the 30 nearest voxels: compact
    again = random_regions(grey, 30, 5, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(regions, again))


def test_share_table_compares_each_map_with_random_regions_and_the_true_region():
    rng = np.random.default_rng(1)
    rows = []
    for subject in range(8):
        shares = {"good": 0.9 + 0.05 * rng.standard_normal(), "bad": 0.02 * rng.standard_normal(),
                  RANDOM: 0.05 + 0.02 * rng.standard_normal(), TRUTH: 1.0}
        for session in range(2):
            rows += [{"subject": f"s{subject}", "region": name, "share": value, "effect": 2.0, "percent": 1.5}
                     for name, value in shares.items()]
    rows += [{"subject": "tiny", "region": name, "share": np.nan, "effect": 0.01, "percent": 1.5}
             for name in ("good", "bad", RANDOM, TRUTH)]
    table = share_table(pd.DataFrame(rows), n_bootstrap=200, seed=0).set_index("method")
    assert list(table.index) == ["good", "bad"]
    assert (table["n_subjects"] == 8).all() and (table["n_undefined"] == 1).all()
    assert table.loc["good", "above_random"] and not table.loc["bad", "above_random"]
    assert table.loc["good", "share_ci_low"] < table.loc["good", "share"] < table.loc["good", "share_ci_high"]
    np.testing.assert_allclose(table["truth_share"], 1.0)
    np.testing.assert_allclose(table["region_percent"], 1.5)
    np.testing.assert_allclose(table["disease_effect"], 2.0)


@pytest.mark.slow
def test_twin_test_table_end_to_end_on_a_simulated_cohort_with_twins(tmp_path):
    """adheat-simulate --twins, two trained folds, Saliency maps: the twins are preprocessed beside the outputs
    (never in the input dataset), the table has a row per map over the held-out AD/MCI subjects, the report
    shows it, and a rerun skips it."""
    from adheat_app.attribution.runner import run_heatmaps
    from adheat_app.citation import dataset_citation
    from adheat_app.evaluation.twin_test import run_twin_test
    from adheat_app.layout import TWIN_TEST, find_preproc, group_table, twins_root
    from adheat_app.report.group import _twin_test
    from adheat_app.templates import get_template
    from adheat_app.training import run_training

    config, derivs, cohort, _ = make_preprocessed_cohort(
        tmp_path, n_subjects=8, seed=4, effect_size=0.4, twins=True, training__model="resnet3d", training__folds=2,
        training__epochs=2, training__batch_size=4,
        training__steps=0, heatmaps__methods=("Saliency",), evaluation__n_bootstrap=50)
    before = tree_digest(config.bids_dir)
    assert run_training(config, derivs, cohort) == [0, 1]
    run_heatmaps(config, derivs, cohort)
    template = get_template(config.execution.resolution, cohort.space)
    table = run_twin_test(config, derivs, cohort, template)
    carriers = sorted(s.subject for s in cohort.scans if s.diagnosis == "AD")
    assert sorted(name.get("sub") for _, name in find_preproc(twins_root(derivs.root))) == carriers
    assert list(table["method"]) == ["Saliency"]
    row = table.iloc[0]
    assert row["n_subjects"] + row["n_undefined"] == len(carriers) and row["n_subjects"] > 0
    assert np.isfinite(row[["share", "random_share", "truth_share", "share_vs_random"]].astype(float)).all()
    assert 0 < row["region_percent"] < 20
    path = group_table(derivs.root, TWIN_TEST)
    assert "Saliency" in _twin_test(derivs.root) and "## Twin test" in dataset_citation(config, derivs)[0]
    stamp = path.stat().st_mtime_ns
    run_twin_test(config, derivs, cohort, template)
    assert path.stat().st_mtime_ns == stamp
    assert tree_digest(config.bids_dir) == before
    assert run_twin_test(config.replace("evaluation", twin_test=False), derivs, cohort, template) is None


def test_report_shows_the_twin_test_and_the_methods_text_only_when_its_table_exists(tmp_path):
    """group.html: its own section (methods, not their controls, on the summary line), the answer's faithfulness
    sentence, and the methods text's paragraph, each only once group/twin_test.tsv exists."""
    from adheat_app.citation import render_citation, steps_present
    from adheat_app.bids import Derivatives
    from adheat_app.config import build_config
    from adheat_app.report.answer import answer_sentences
    from adheat_app.report.group import _faithfulness, _twin_test

    config = build_config(tmp_path, tmp_path / "out", ("group",), {}, {})
    derivs = Derivatives(tmp_path, tmp_path)
    assert _twin_test(tmp_path) == "" and "twin" not in answer_sentences(config, tmp_path, None)
    assert "twintest" not in steps_present(derivs, "resnet3d")
    rows = [{"method": name, "n_subjects": 6, "n_undefined": 1, "share": share, "share_ci_low": share - 0.1,
             "share_ci_high": share + 0.1, "random_share": 0.05, "random_share_ci_low": 0.0,
             "random_share_ci_high": 0.1, "truth_share": 0.9, "truth_share_ci_low": 0.8,
             "truth_share_ci_high": 1.0, "above_random": share > 0.3}
            for name, share in (("IG", 0.6), ("Saliency", 0.1), ("IGRandom", 0.0))]
    (tmp_path / "group").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "group" / "twin_test.tsv", sep="\t", index=False)
    shown = _twin_test(tmp_path)
    assert "IG 0.600 [0.500, 0.700]; Saliency 0.100 [0.000, 0.200]." in shown and "IGRandom 0" not in shown
    assert "the true region itself: 0.900 [0.800, 1.000]; 6 subjects (1 with" in shown and 'href="group/twin_test.tsv"' in shown
    assert _faithfulness(tmp_path) == ""  # not shown twice
    assert "above random in group/twin_test.tsv: IG; not: IGRandom, Saliency" in answer_sentences(config, tmp_path,
                                                                                                   None)
    assert "twintest" in steps_present(derivs, "resnet3d")
    text, _ = render_citation(config, {"always", "twintest"})
    assert "## Twin test" in text and "10 random compact grey-matter regions" in text and "0.1 log-odds" in text
    assert "## Twin test" not in render_citation(config, {"always"})[0]
