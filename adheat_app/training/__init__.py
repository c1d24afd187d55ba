"""Cross-validated CNN training: folds, cached volumes, the training loop, metrics."""
