"""Classification metrics and the shared group tables of cross-validation results.

Both the CNN (:mod:`adheat_app.training`) and the SVM baseline
(:mod:`adheat_app.baseline`) report through these functions, so their rows in
``group/cv_metrics.tsv`` and ``group/predictions.tsv`` are computed and
formatted the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from adheat_app.io import write_tsv

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")


def classification_metrics(y_true, probability, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, balanced accuracy, ROC AUC, sensitivity and specificity.

    Parameters
    ----------
    y_true : array of {0, 1}
        True classes (1 = positive).
    probability : array of float
        Predicted probability of the positive class.
    threshold : float
        Probability at or above which a scan is called positive.

    Returns
    -------
    dict
        The five metrics; ROC AUC is NaN when ``y_true`` holds one class only.
    """
    y = np.asarray(y_true, dtype=int)
    pred = (np.asarray(probability, dtype=float) >= threshold).astype(int)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    pos, neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    sens = tp / pos if pos else float("nan")
    spec = tn / neg if neg else float("nan")
    auc = roc_auc_score(y, probability) if pos and neg else float("nan")
    return {
        "accuracy": float(np.mean(pred == y)) if len(y) else float("nan"),
        "balanced_accuracy": float(np.nanmean([sens, spec])) if pos or neg else float("nan"),
        "roc_auc": float(auc),
        "sensitivity": float(sens),
        "specificity": float(spec),
    }


def summarize_folds(model: str, fold_rows: list[dict]) -> pd.DataFrame:
    """Per-fold metric rows of one model plus its ``mean`` and ``sd`` rows.

    Each element of ``fold_rows`` holds ``fold``, ``n_test`` and the metrics.
    """
    table = pd.DataFrame(fold_rows)
    table.insert(0, "model", model)
    numeric = table[list(METRICS)].astype(float)
    summary = pd.DataFrame([
        {"model": model, "fold": "mean", "n_test": int(table["n_test"].sum()), **numeric.mean().to_dict()},
        {"model": model, "fold": "sd", "n_test": int(table["n_test"].sum()), **numeric.std(ddof=1).to_dict()},
    ])
    return pd.concat([table.astype({"fold": str}), summary], ignore_index=True)


def update_table(path: Path, rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """Replace the rows of ``model`` in a group TSV (creating it) and write it atomically.

    Tables hold one block of rows per model (e.g. the CNN and ``SVM``); a rerun
    of one model replaces its block where it stands, so a resumed run writes
    the same table as an uninterrupted one.
    """
    path = Path(path)
    if path.is_file():
        old = pd.read_csv(path, sep="\t", dtype={"fold": str, "subject": str, "session": str})
        blocks = [rows if name == model else part for name, part in old.groupby("model", sort=False)]
        table = pd.concat(blocks if model in set(old["model"]) else [*blocks, rows], ignore_index=True)
    else:
        table = rows
    write_tsv(path, table)
    return table
