"""Figures of cross-validated training: per-fold learning curves and the ROC curves of all folds."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from adheat_app.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(path)


def plot_training_curve(curve: pd.DataFrame, best_epoch: int, title: str, path: Path) -> Path:
    """Training and validation loss (left axis) and validation accuracy (right) per epoch, best epoch marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["epoch"], curve["train_loss"], label="training loss")
    ax.plot(curve["epoch"], curve["val_loss"], label="validation loss")
    ax.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy (class-weighted)")
    acc = ax.twinx()
    acc.plot(curve["epoch"], curve["val_accuracy"], color="tab:green", alpha=0.6, label="validation accuracy")
    acc.set_ylim(0, 1)
    acc.set_ylabel("validation accuracy")
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(predictions: pd.DataFrame, model: str, path: Path) -> Path:
    """ROC curve of each fold's held-out test scans (columns fold, target, probability)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for fold, rows in predictions.groupby("fold", sort=True):
        if rows["target"].nunique() == 2:
            fpr, tpr, _ = roc_curve(rows["target"], rows["probability"])
            ax.plot(fpr, tpr, label=f"fold {fold}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{model}: ROC per fold (test subjects)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
