"""Baselines on the CNN's folds: the linear SVM and its activation patterns (Haufe et al. 2014), the
covariate-only control classifiers (can site, age or sex, alone or together, predict the diagnosis?) and the
nested test of whether the CNN adds to them."""

from adheat_app.baseline.covariates import run_covariates
from adheat_app.baseline.nested import run_nested_test
from adheat_app.baseline.svm import run_svm

__all__ = ["run_covariates", "run_nested_test", "run_svm"]
