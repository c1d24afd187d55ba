"""Classification metrics, the verdict against chance, and the shared group tables of cross-validation results.

The CNN (:mod:`adheat_app.training`), the SVM baseline and the covariate-only
controls (:mod:`adheat_app.baseline`) report through these functions, so their rows in
``group/cv_metrics.tsv`` and ``group/predictions.tsv`` are computed and
formatted the same way.

Each model's block of ``cv_metrics.tsv`` has one row per fold, the ``mean``
and ``sd`` over folds, and a ``pooled`` row: the metrics of all out-of-fold
predictions together, with the verdict of :func:`chance_verdict` — a bootstrap
95 % interval of the pooled ROC AUC over subjects (``roc_auc_ci_low``,
``roc_auc_ci_high``; chance is 0.5), the one-sided Mann-Whitney p-value of
the positive subjects' scores being higher than the negative subjects'
(``p_value``), ``better_than_chance``: the interval lies above 0.5, and
``below_chance``: the interval lies below 0.5 (a model reliably worse than
guessing; in small cross-validated samples usually confounded folds, e.g. a
site or age difference that reverses between training and test sets).

With ``--repeats R`` > 1 the rows carry a ``repeat`` column: one row per
repeat and fold, ``mean`` and ``sd`` over all of them, a ``repeat-<r>`` row
with the pooled metrics of each repeat, ``sd-repeats`` (their SD across
repeats), and the ``pooled`` row: the mean over repeats of the pooled
metrics, whose interval resamples subjects and, in each resample, one repeat
(:func:`chance_verdict`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, rankdata
from sklearn.metrics import roc_auc_score

from adheat_app.cohort import Scan
from adheat_app.io import write_tsv

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")
#: Columns of the verdict against chance (``pooled`` row only).
VERDICT = ("roc_auc_ci_low", "roc_auc_ci_high", "p_value", "better_than_chance", "below_chance")
#: ROC AUC of a classifier that guesses.
CHANCE_AUC = 0.5
#: What a pooled ROC AUC interval entirely below chance means (the log's and the report's words).
BELOW_CHANCE = ("its pooled out-of-fold ROC AUC is reliably BELOW chance (95 % interval entirely under 0.5): "
                "a finding in itself; in small cross-validated samples it usually means confounded folds "
                "(a site, age or sex difference between the classes that reverses between training and test "
                "sets): check the covariate-only controls and try --cv leave-site-out")


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


def rank_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from ranks (Mann-Whitney U / (n1 n0), ties counted half): sklearn's value, without its input checks
    (which dominate the bootstrap's time)."""
    ranks = rankdata(score)
    positive = target == 1
    n1 = int(positive.sum())
    n0 = len(target) - n1
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def chance_verdict(predictions: pd.DataFrame, n_bootstrap: int, seed: int) -> dict[str, float | bool]:
    """Whether pooled out-of-fold predictions separate the classes better (or worse) than chance.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Out-of-fold predictions with columns ``subject``, ``target`` and
        ``probability`` (several rows per subject for several sessions), and
        optionally ``repeat`` (``--repeats``: every scan once per repeat).
    n_bootstrap : int
        Bootstrap resamples of subjects for the interval.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict
        ``roc_auc_ci_low`` / ``roc_auc_ci_high``: percentile 95 % interval of
        the pooled ROC AUC over subjects resampled with replacement (a subject's
        sessions travel together; resamples holding one class are redrawn);
        with several repeats each resample also draws one repeat at random
        (its own generator, so one repeat resamples exactly as before) and
        scores that repeat's predictions, so the interval holds the
        repeat-to-repeat variation of training besides subject sampling;
        ``p_value``: one-sided Mann-Whitney U test of the positive subjects'
        scores (mean probability over their sessions and repeats) exceeding
        the negative subjects'; ``better_than_chance``: ``roc_auc_ci_low >
        0.5``; ``below_chance``: ``roc_auc_ci_high < 0.5``.
    """
    subjects = predictions["subject"].astype(str).to_numpy()
    names, index = np.unique(subjects, return_inverse=True)
    rows_of = [np.flatnonzero(index == i) for i in range(len(names))]
    target = predictions["target"].to_numpy(int)
    probability = predictions["probability"].to_numpy(float)
    repeat = predictions["repeat"].to_numpy(int) if "repeat" in predictions.columns else np.zeros(len(target), int)
    per_subject = pd.DataFrame({"s": index, "t": target, "p": probability}).groupby("s").mean()
    positive, negative = per_subject["p"][per_subject["t"] == 1], per_subject["p"][per_subject["t"] == 0]
    if len(positive) == 0 or len(negative) == 0:
        return {"roc_auc_ci_low": float("nan"), "roc_auc_ci_high": float("nan"), "p_value": float("nan"),
                "better_than_chance": False, "below_chance": False}
    p_value = float(mannwhitneyu(positive, negative, alternative="greater").pvalue)
    rng, pick = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    n_repeats = int(repeat.max()) + 1
    aucs = []
    while len(aucs) < n_bootstrap:
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(names), len(names))])
        if n_repeats > 1:
            rows = rows[repeat[rows] == pick.integers(n_repeats)]
        if 0 < target[rows].sum() < len(rows):
            aucs.append(rank_auc(target[rows], probability[rows]))
    low, high = np.percentile(aucs, [2.5, 97.5]) if aucs else (float("nan"), float("nan"))
    return {"roc_auc_ci_low": float(low), "roc_auc_ci_high": float(high), "p_value": p_value,
            "better_than_chance": bool(low > CHANCE_AUC), "below_chance": bool(high < CHANCE_AUC)}


def summarize_folds(model: str, fold_rows: list[dict], predictions: pd.DataFrame, n_bootstrap: int,
                    seed: int) -> pd.DataFrame:
    """Per-fold metric rows of one model plus its ``mean``, ``sd`` and ``pooled`` rows.

    Parameters
    ----------
    model : str
        Model name (first column).
    fold_rows : list of dict
        Per fold: ``fold``, ``n_test`` and the metrics (and ``repeat`` with ``--repeats``).
    predictions : pandas.DataFrame
        Every out-of-fold prediction of the model (``subject``, ``target``,
        ``probability``, and ``repeat`` with several repeats): the ``pooled``
        row and its :func:`chance_verdict`.
    n_bootstrap, seed : int
        Passed to :func:`chance_verdict`.
    """
    table = pd.DataFrame(fold_rows)
    table.insert(0, "model", model)
    numeric = table[list(METRICS)].astype(float)
    n_test = int(table["n_test"].sum())
    by_repeat = (list(predictions.groupby("repeat", sort=True)) if "repeat" in predictions.columns
                 else [(None, predictions)])
    per_repeat = pd.DataFrame([{"model": model, "fold": f"repeat-{r}", "repeat": r, "n_test": len(rows),
                                **classification_metrics(rows["target"], rows["probability"])}
                               for r, rows in by_repeat])
    repeat_metrics = per_repeat[list(METRICS)].astype(float)
    summary = pd.DataFrame([
        {"model": model, "fold": "mean", "n_test": n_test, **numeric.mean().to_dict()},
        {"model": model, "fold": "sd", "n_test": n_test, **numeric.std(ddof=1).to_dict()},
        *([{"model": model, "fold": "sd-repeats", "n_test": n_test, **repeat_metrics.std(ddof=1).to_dict()}]
          if len(by_repeat) > 1 else []),
        {"model": model, "fold": "pooled", "n_test": int(per_repeat["n_test"].iloc[0]),
         **repeat_metrics.mean().to_dict(), **chance_verdict(predictions, n_bootstrap, seed)},
    ])
    blocks = [table.astype({"fold": str}), *([per_repeat] if len(by_repeat) > 1 else []), summary]
    return pd.concat(blocks, ignore_index=True)


def prediction_rows(model: str, fold: int, scans: Sequence[Scan], probability: Sequence[float]) -> list[dict]:
    """Rows of ``group/predictions.tsv``: one per held-out scan of ``fold`` (probability of the positive class)."""
    return [{"model": model, "fold": fold, "subject": s.subject, "session": s.session, "diagnosis": s.diagnosis,
             "target": s.target, "probability": float(p), "predicted": int(p >= 0.5)}
            for s, p in zip(scans, probability)]


def _read_table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype={"fold": str, "subject": str, "session": str})


def remove_models(path: Path, drop: Callable[[str], bool]) -> None:
    """Remove from a group TSV the rows of every model for which ``drop(model)`` is true (atomically)."""
    if not Path(path).is_file():
        return
    table = _read_table(path)
    kept = table[[not drop(str(model)) for model in table["model"]]]
    if len(kept) < len(table):
        write_tsv(path, kept)


def update_table(path: Path, rows: pd.DataFrame, model: str) -> pd.DataFrame:
    """Replace the rows of ``model`` in a group TSV (creating it) and write it atomically.

    Tables hold one block of rows per model (e.g. the CNN and ``SVM``); a rerun
    of one model replaces its block where it stands, so a resumed run writes
    the same table as an uninterrupted one.
    """
    path = Path(path)
    if path.is_file():
        old = _read_table(path)
        blocks = [rows if name == model else part for name, part in old.groupby("model", sort=False)]
        table = pd.concat(blocks if model in set(old["model"]) else [*blocks, rows], ignore_index=True)
    else:
        table = rows
    if "repeat" in table.columns:  # whole numbers, blank (n/a) for models without repeats
        table = table.astype({"repeat": "Int64"})
    write_tsv(path, table)
    return table
