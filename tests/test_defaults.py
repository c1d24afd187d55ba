"""The product's defaults: the default CNN learns planted atrophy, stays at chance without it, its heatmaps find
the planted region, a model that learned nothing is reported as such, and one that learned the scanner is caught
by the site-only control; the evaluation's primary answer says "finds" only for the planted cohort.

Every test here trains with the default training options (no training flag: model, step budget, optimiser,
schedule, regularisation, folds); only the cohort is small (16-24 subjects at 4 mm, oracle-preprocessed by
``conftest.make_preprocessed_cohort`` with the default intensity normalisation), and the evaluation uses 400
bootstrap resamples and 500 permutations instead of 1000 (enough for Holm's correction of up to 10 primary
rows, :func:`adheat_app.evaluation.answer.holm_reachable`). One test per cohort, so that pytest-xdist trains
each cohort once.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app.attribution.catalog import default_methods
from adheat_app.attribution.runner import run_heatmaps
from adheat_app.config import TrainingOptions
from adheat_app.evaluation import run_evaluation
from adheat_app.io import read_json
from adheat_app.report import write_group_report
from adheat_app.simulate import relevance_ratio
from adheat_app.training import run_training
from adheat_app.training.runner import read_verdict
from conftest import heatmap_file, make_preprocessed_cohort

pytestmark = pytest.mark.slow

#: The default heatmap methods, and patch occlusion (with Rieke et al.'s 40 mm patches, for speed).
METHODS = (*default_methods(), "Occlusion")
OCCLUSION = {"heatmaps__occlusion_size": 40.0, "heatmaps__occlusion_stride": 20.0}
EVALUATION = {"evaluation__n_bootstrap": 400, "evaluation__n_permutations": 500}


def evaluate(config, derivs, cohort, truth) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the evaluation step; ``answer.tsv`` and ``overlap_differences.tsv``, checked for estimates inside their
    intervals."""
    run_evaluation(config, derivs, cohort, truth.template)
    group = derivs.root / "group"
    answer = pd.read_csv(group / "answer.tsv", sep="\t")
    differences = pd.read_csv(group / "overlap_differences.tsv", sep="\t", na_values=["n/a"])
    for table, value in ((answer, "value"), (differences, "difference"),
                         (pd.read_csv(group / "overlap.tsv", sep="\t", na_values=["n/a"]), "value")):
        bounded = table.dropna(subset=["ci_low", "ci_high"])
        assert ((bounded["ci_low"] <= bounded[value] + 1e-12) & (bounded[value] <= bounded["ci_high"] + 1e-12)).all()
    assert answer["primary"].any() and answer[answer["primary"]]["p_holm"].notna().all()
    return answer, differences


def default_run(root, null: bool):
    """Train with the defaults on a 24-subject 4 mm cohort, derive out-of-fold heatmaps, return the numbers."""
    config, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=24, seed=3, effect_size=0.3,
                                                             null=null, heatmaps__methods=METHODS, **OCCLUSION,
                                                             **EVALUATION)
    assert config.training == TrainingOptions()  # nothing but the defaults
    run_training(config, derivs, cohort)
    run_heatmaps(config, derivs, cohort)
    table = pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    brain = truth.template.mask_array().astype(bool)
    ad = [s for s in cohort.scans if s.target == 1]
    ratios = {}
    for method in METHODS:
        maps = np.stack([np.asarray(nib.load(heatmap_file(derivs, cohort, s, method)).dataobj) for s in ad])
        ratios[method] = relevance_ratio(maps, truth.region, brain)
    return config, derivs, cohort, truth, table.set_index("fold"), ratios


def test_defaults_learn_planted_atrophy_and_their_heatmaps_find_it(tmp_path):
    config, derivs, cohort, truth, table, ratios = default_run(tmp_path, null=False)
    assert table.loc["mean", "balanced_accuracy"] >= 0.85, table
    assert bool(table.loc["pooled", "better_than_chance"]) and table.loc["pooled", "p_value"] < 0.01
    failing = {name: round(r, 2) for name, r in ratios.items() if not r >= 3.0}
    assert not failing, ratios
    verdict = read_verdict(config.models_dir, config.training.model)
    assert verdict["BetterThanChance"] is True
    sidecar = read_json(heatmap_file(derivs, cohort, cohort.scans[0], "IG").with_suffix("").with_suffix(".json"))
    assert sidecar["ModelBetterThanChance"] is True
    answer, differences = evaluate(config, derivs, cohort, truth)
    ig = answer[(answer["method"] == "IG") & answer["primary"]].set_index("reference").loc["simulation"]
    assert ig["finds_reference"] and ig["p_holm"] < 0.05, ig
    versus = differences[(differences["label"] == "all") & (differences["reference"] == "simulation")
                         & (differences["metric"] == "roc_auc") & (differences["method_a"] == "IG")
                         & (differences["sign_a"] == "absolute")].set_index("method_b")
    for control in ("BaselineDeviation", "GreyMatterPrior", "InputMagnitude"):  # IG beats each control
        assert versus.loc[control, "ci_low"] > 0, versus.loc[control]


def test_defaults_on_a_null_cohort_stay_at_chance_and_say_so(tmp_path):
    config, derivs, cohort, truth, table, ratios = default_run(tmp_path, null=True)
    answer, _ = evaluate(config, derivs, cohort, truth)
    assert not answer[answer["primary"]]["finds_reference"].any(), answer[answer["primary"]]
    assert not answer["model_better_than_chance"].any() and not answer["finds_reference"].any()
    assert abs(table.loc["mean", "balanced_accuracy"] - 0.5) <= 0.15, table
    assert table.loc["pooled", "roc_auc_ci_low"] <= 0.5 and not bool(table.loc["pooled", "better_than_chance"])
    for name, ratio in ratios.items():
        assert not ratio >= 3.0, (name, ratios)
    assert read_verdict(config.models_dir, config.training.model)["BetterThanChance"] is False
    for scan in cohort.scans:
        sidecar = read_json(heatmap_file(derivs, cohort, scan, "IG").with_suffix("").with_suffix(".json"))
        assert sidecar["ModelBetterThanChance"] is False
    html = write_group_report(config, derivs, cohort, truth.template).read_text()
    warning = html.index('id="model-warning"')
    assert warning < html.index('id="summary"') and warning < html.index('id="heatmaps"')
    assert "resnet3d is not better than chance" in html[warning:warning + 400]


def test_defaults_learn_a_site_confound_and_the_report_says_so(tmp_path):
    """No atrophy, every AD subject from site 0 and every CN from site 1 (--site-imbalance 1.0 --null): the
    default CNN learns the scanner, the site-only control classifier matches it, and the report warns."""
    from adheat_app.baseline.covariates import run_covariates
    from adheat_app.training import make_folds

    config, derivs, cohort, truth = make_preprocessed_cohort(tmp_path, n_subjects=16, seed=3, null=True, sites=2,
                                                             site_imbalance=1.0, **EVALUATION)
    assert config.training == TrainingOptions()
    run_training(config, derivs, cohort)
    run_covariates(config, derivs, make_folds(cohort, config.training.folds, config.execution.seed, 0.0))
    table = pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    pooled = table[table["fold"] == "pooled"].set_index("model")
    assert bool(pooled.loc["resnet3d", "better_than_chance"]), pooled  # it learned something: the site
    assert pooled.loc["covariate-site", "roc_auc"] == 1.0 and bool(pooled.loc["covariate-site", "better_than_chance"])
    assert not bool(pooled.loc["covariate-sex", "better_than_chance"]), pooled
    html = write_group_report(config, derivs, cohort, truth.template).read_text()
    warning = html.index('id="confound-warning"')
    assert warning < html.index('id="summary"')
    assert "site alone separates AD from CN" in html[warning:warning + 600]
    # its heatmaps find no atrophy (there is none), and the cohort reference cannot tell site from diagnosis
    run_heatmaps(config, derivs, cohort)
    answer, _ = evaluate(config, derivs, cohort, truth)
    assert not answer[answer["primary"]]["finds_reference"].any(), answer[answer["primary"]]
    uninformative = read_json(derivs.root / "group" / "answer.json")["UninformativeReferences"]
    assert "confounded with the covariates" in uninformative["cohort"] and "cohort" not in set(answer["reference"])
