"""Baselines on the CNN's folds: the linear SVM and its activation patterns (Haufe et al. 2014), and the
covariate-only control classifiers (can site, age or sex alone predict the diagnosis?)."""

from adheat_app.baseline.covariates import run_covariates
from adheat_app.baseline.svm import run_svm

__all__ = ["run_covariates", "run_svm"]
