"""Linear-SVM baseline: Haufe activation patterns, and the SVM on a simulated cohort with planted atrophy."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from adheat_app.baseline import run_svm
from adheat_app.baseline.patterns import activation_pattern
from adheat_app.baseline.svm import fit_fold, output_paths, predict
from conftest import make_preprocessed_cohort


@dataclass(frozen=True)
class SimpleFold:
    """Stand-in for training.Fold: index, train, val, test tuples of scans."""

    index: int
    train: tuple
    val: tuple
    test: tuple


def round_robin_folds(scans, n_folds: int) -> list[SimpleFold]:
    """Stratified folds by subject: AD and CN dealt out in turn; the first training scan is 'val'."""
    by_class = [sorted((s for s in scans if s.target == t), key=lambda s: s.subject) for t in (1, 0)]
    assignment = {}
    for members in by_class:
        for i, s in enumerate(members):
            assignment[s.key] = i % n_folds
    folds = []
    for k in range(n_folds):
        test = tuple(s for s in scans if assignment[s.key] == k)
        rest = tuple(s for s in scans if assignment[s.key] != k)
        folds.append(SimpleFold(k, rest[1:], rest[:1], test))
    return folds


def test_pattern_equals_dense_covariance_times_weights():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(15, 40)) + rng.normal(size=40)
    w = rng.normal(size=40)
    dense = np.cov(x, rowvar=False) @ w
    assert np.allclose(activation_pattern(x, w), dense, rtol=1e-10, atol=1e-12)
    scaled = activation_pattern(x, w, scale=True)
    assert np.allclose(scaled, dense / np.var(x @ w, ddof=1), rtol=1e-10)
    assert np.allclose(activation_pattern(x.astype(np.float32), w), dense, rtol=1e-4, atol=1e-4)


def test_recovered_weights_reproduce_the_kernel_svm():
    """w = sum alpha_i y_i z_i gives the decision values of the kernel SVM, and Platt probabilities order them."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 10)
    x = rng.normal(size=(20, 30)) + 1.5 * y[:, None] * (np.arange(30) < 5)
    model = fit_fold(x, y, np.arange(20).astype(str), seed=0)
    decision, probability = predict(model, x)
    z = model["scaler"].transform(x)
    from sklearn.svm import SVC

    svc = SVC(C=model["C"], kernel="linear").fit(z, y)
    assert np.allclose(decision, svc.decision_function(z), atol=1e-6)
    assert np.all(np.diff(probability[np.argsort(decision)]) >= 0)
    assert model["pattern"][:5].mean() > 2.5 * np.abs(model["pattern"][5:]).mean()


@pytest.fixture(scope="module")
def svm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("svm")
    config, derivs, cohort, truth = make_preprocessed_cohort(root, n_subjects=12, resolution=4.0, seed=2,
                                                             effect_size=0.3)
    folds = round_robin_folds(cohort.labelled, 3)
    cnn_rows = pd.DataFrame([{"model": "cnn", "fold": "0", "n_test": 4, "accuracy": 0.5, "balanced_accuracy": 0.5,
                              "roc_auc": 0.5, "sensitivity": 0.5, "specificity": 0.5}])
    (derivs.root / "group").mkdir(parents=True, exist_ok=True)
    cnn_rows.to_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", index=False)
    run_svm(config, derivs, cohort, folds)
    return config, derivs, cohort, truth, folds


@pytest.mark.slow
def test_svm_finds_the_planted_region_and_classifies(svm_run):
    config, derivs, cohort, truth, _ = svm_run
    metrics = pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    assert set(metrics["model"]) == {"cnn", "SVM"}
    mean = metrics[(metrics["model"] == "SVM") & (metrics["fold"] == "mean")].iloc[0]
    assert mean["balanced_accuracy"] >= 0.9
    predictions = pd.read_csv(derivs.root / "group" / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert len(predictions) == 12 and set(predictions["model"]) == {"SVM"}
    assert predictions["probability"].between(0, 1).all()
    pattern_path, weights_path = output_paths(derivs, cohort)
    pattern = np.abs(np.asarray(nib.load(pattern_path).dataobj))
    brain = truth.template.mask_array()
    inside = pattern[truth.region].mean()
    outside = pattern[brain & ~truth.region].mean()
    assert inside > 2 * outside
    top = pattern >= np.quantile(pattern[brain], 0.99)
    # the planted region is ~5 % of the brain but holds most of the strongest pattern voxels
    assert (top & truth.region).sum() >= 0.8 * top.sum()
    # atrophy lowers intensity in AD (positive class): the pattern is negative in the region
    assert np.asarray(nib.load(pattern_path).dataobj)[truth.region].mean() < 0
    sidecar = json.loads(pattern_path.with_name(pattern_path.name.replace(".nii.gz", ".json")).read_text())
    assert len(sidecar["Folds"]) == 3 and sidecar["Sources"]
    assert weights_path.is_file()


@pytest.mark.slow
def test_svm_rerun_skips(svm_run):
    config, derivs, cohort, _, folds = svm_run
    pattern_path, _ = output_paths(derivs, cohort)
    stamp = pattern_path.stat().st_mtime_ns
    run_svm(config, derivs, cohort, folds)
    assert pattern_path.stat().st_mtime_ns == stamp


def test_covariate_controls_catch_a_site_confound_and_read_columns_right(tmp_path):
    """Every AD subject from site 0 and every CN from site 1: the site-only classifier separates them perfectly
    (ROC AUC 1, better than chance); sex, drawn independently of the diagnosis, does not; numbered sites are
    categorical, ages numeric; an absent column is skipped and 'none' tests nothing."""
    from adheat_app.baseline.covariates import covariate_columns, is_categorical, run_covariates
    from adheat_app.baseline.nested import run_nested_test
    from adheat_app.training import make_folds

    config, derivs, cohort, _ = make_preprocessed_cohort(tmp_path, n_subjects=16, seed=3, null=True, sites=2,
                                                         site_imbalance=1.0, training__covariates=("age", "sex",
                                                                                                   "site", "mmse"))
    folds = make_folds(cohort, 4, 3, 0.0)
    columns = covariate_columns(config, cohort.scans)
    assert {name: categorical for name, (_, categorical) in columns.items()} == \
        {"age": False, "sex": True, "site": True}
    assert is_categorical(pd.Series(["002", "941", None]), {}) and is_categorical(pd.Series(["A", "B"]), {})
    assert not is_categorical(pd.Series(["71", "80.5", None]), {}) and is_categorical(pd.Series(["0", "1"]),
                                                                                     {"Levels": {}})
    run_covariates(config, derivs, folds)
    table = pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t", dtype={"fold": str})
    pooled = table[table["fold"] == "pooled"].set_index("model")
    assert set(pooled.index) == {"covariate-age", "covariate-sex", "covariate-site", "covariate-all"}
    assert pooled.loc["covariate-site", "roc_auc"] == 1.0 and bool(pooled.loc["covariate-site", "better_than_chance"])
    assert not bool(pooled.loc["covariate-sex", "better_than_chance"])
    assert bool(pooled.loc["covariate-all", "better_than_chance"])  # the joint model sees the site too
    predictions = pd.read_csv(derivs.root / "group" / "predictions.tsv", sep="\t", dtype={"subject": str})
    assert (predictions.groupby("model").size() == 16).all()
    site = predictions[predictions["model"] == "covariate-site"]
    assert ((site["probability"] > 0.5) == (site["target"] == 1)).all()
    # a CNN that read only the scanner adds nothing to the covariates; the nested test says so
    cnn = site.assign(model=config.training.model)
    pd.concat([predictions, cnn]).to_csv(derivs.root / "group" / "predictions.tsv", sep="\t", index=False)
    run_nested_test(config, derivs, folds)
    nested = pd.read_csv(derivs.root / "group" / "covariates_nested_test.tsv", sep="\t").iloc[0]
    assert nested["covariates"] == "age,sex,site" and nested["n_subjects"] == 16 and nested["lr_chance"] == 1
    assert not nested["adds_to_covariates"] and nested["p_value"] > 0.05
    none = dataclasses.replace(config, training=dataclasses.replace(config.training, covariates=("none",)))
    assert covariate_columns(none, cohort.scans) == {}
    run_covariates(none, derivs, folds)  # a rerun without covariates leaves none of their rows behind
    assert pd.read_csv(derivs.root / "group" / "cv_metrics.tsv", sep="\t").empty
    assert set(pd.read_csv(derivs.root / "group" / "predictions.tsv", sep="\t")["model"]) == {"resnet3d"}
    run_nested_test(none, derivs, folds)
    assert not (derivs.root / "group" / "covariates_nested_test.tsv").exists()


def _synthetic_subjects(n: int, seed: int) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """Diagnoses, covariates (a site that predicts them in part, age, sex), a disease signal and noise."""
    rng = np.random.default_rng(seed)
    target = np.repeat([0, 1], n // 2)
    site = np.where(rng.random(n) < 0.3 + 0.4 * target, "B", "A").astype(object)
    covariates = pd.DataFrame({"site": site, "age": rng.normal(72, 6, n),
                               "sex": rng.choice(np.array(["F", "M"], dtype=object), n)})
    return target, covariates, 1.5 * target + rng.normal(0, 1, n), rng.normal(0, 1, n)


def test_nested_test_finds_a_score_beyond_the_covariates_and_not_a_site_proxy():
    """Synthetic subjects, no CNN: a score carrying disease signal independent of the covariates adds to them
    (likelihood ratio far above its chance level 1, odds ratio interval above 1); pure noise and a score that is
    the site itself do not."""
    from adheat_app.baseline.nested import nested_test

    kinds = {"site": True, "age": False, "sex": True}
    target, covariates, signal, noise = _synthetic_subjects(120, seed=0)
    found = nested_test(target, covariates, kinds, signal)
    assert found["adds_to_covariates"] and found["p_value"] < 1e-4 and found["lr_statistic"] > 15
    assert 1 < found["odds_ratio_ci_low"] < found["odds_ratio"] < found["odds_ratio_ci_high"]
    proxy = (covariates["site"] == "B").to_numpy(float) + 1e-3 * noise
    for score in (noise, proxy):
        result = nested_test(target, covariates, kinds, score)
        assert not result["adds_to_covariates"]
        assert result["odds_ratio_ci_low"] < result["odds_ratio_chance"] < result["odds_ratio_ci_high"]
    rejections = [nested_test(*_synthetic_subjects(60, seed)[:2], kinds, _synthetic_subjects(60, seed)[3])
                  ["adds_to_covariates"] for seed in range(1, 41)]
    assert sum(rejections) <= 6  # ~5 % false positives under the null (binomial 40 x 0.05: 6 or fewer, p > 0.95)
