"""Linear-SVM baseline on the CNN's folds and its activation patterns (Haufe et al. 2014)."""

from adheat_app.baseline.svm import run_svm

__all__ = ["run_svm"]
