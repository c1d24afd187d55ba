"""Cross-validated CNN training: folds, cached volumes, the training loop, metrics.

Modules: :mod:`~adheat_app.training.folds` (subject-level stratified folds,
split files, leakage guard, label checks), :mod:`~adheat_app.training.loop`
(one fold's training with early stopping and resumable epochs),
:mod:`~adheat_app.training.checkpoint`, :mod:`~adheat_app.training.device`
(device, seeds, determinism),
:mod:`~adheat_app.training.metrics` (shared with the SVM baseline) and
:mod:`~adheat_app.training.runner` (the group-level entry point).
"""

from adheat_app.training.device import resolve_device
from adheat_app.training.folds import Fold, make_folds, read_split
from adheat_app.training.runner import fold_dir, load_fold_model, run_training

__all__ = ["Fold", "fold_dir", "load_fold_model", "make_folds", "read_split", "resolve_device", "run_training"]
