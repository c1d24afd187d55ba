"""Scores of every map on shared bootstrap resamples: the overlap rows, paired differences and the answer.

Every map of a group of scans (``label``) — each heatmap method, the SVM
pattern, the controls of :mod:`.controls` — is scored on the *same* bootstrap
resamples of that group's scans, so the difference of two maps' metrics has a
paired percentile interval (:func:`paired_differences`). :func:`answer_table`
turns the scores into the answer to "does a method find the reference": its
:data:`ANSWER_METRIC` interval lies above the chance level *and* its paired
difference with the ``InputMagnitude`` control lies above 0; the paired
difference with the method's own randomised-model control (``<Method>Random``,
when the sanity check wrote it) is reported beside it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adheat_app.evaluation.controls import INPUT_MAGNITUDE
from adheat_app.evaluation.overlap import BOOTSTRAPPED, TOP_PERCENT, percentile_interval
from adheat_app.layout import RANDOM_SUFFIX, MapName

#: Metric of the answer table (threshold-free; chance 0.5 whatever the reference's size).
ANSWER_METRIC = "roc_auc"
#: How a signed map is scored: ``absolute`` value, or ``positive`` part (evidence for the explained class).
SIGNS = ("absolute", "positive")
ANSWER_COLUMNS = ["method", "reference", "sign", "metric", "value", "ci_low", "ci_high", "chance", "effect_over_chance",
                  "above_chance", "vs_input_magnitude", "vs_ci_low", "vs_ci_high", "above_control", "finds_reference",
                  "vs_random", "vs_random_ci_low", "vs_random_ci_high", "above_random"]
DIFFERENCE_COLUMNS = ["label", "reference", "method_a", "sign_a", "method_b", "sign_b", "metric", "top_percent",
                      "difference", "ci_low", "ci_high", "n_bootstrap"]


@dataclass
class Scores:
    """One map's scores against every reference.

    Attributes
    ----------
    method : str
        Method, ``SVM`` or control name.
    kind : str
        ``method`` (heatmap of the trained CNN), ``baseline`` (SVM pattern) or ``control``.
    label : str
        Group of scans the map averages.
    sign : str
        One of :data:`SIGNS`.
    n_subjects : int or None
        Scans in the map (None for maps that average no scans).
    point : list of dict
        Per reference: the metrics of the map (:func:`adheat_app.evaluation.overlap.overlap_metrics`).
    samples : list of dict
        Per reference: each bootstrapped metric on the group's shared resamples, ``(n_resamples, ...)``
        (0 rows when there are none).
    """

    method: str
    kind: str
    label: str
    sign: str
    n_subjects: int | None
    point: list[dict]
    samples: list[dict]


def constant_samples(point: list[dict], n_resamples: int) -> list[dict]:
    """Samples of a map that does not depend on the scans: its point value on every resample."""
    return [{m: np.broadcast_to(np.asarray(values[m], dtype=np.float64),
                                (n_resamples, *np.shape(values[m]))).copy() for m in BOOTSTRAPPED}
            for values in point]


def _percents(value) -> tuple:
    return TOP_PERCENT if np.ndim(value) else (None,)


def overlap_rows(scores: list[Scores], references: list[str], chances: list[dict]) -> list[dict]:
    """One row per map, reference, metric and top-k: value, chance level, 95 % interval."""
    rows = []
    for s in scores:
        for ref, chance, point, samples in zip(references, chances, s.point, s.samples):
            for metric, value in point.items():
                has_samples = metric in samples and len(samples[metric]) > 0
                low, high = percentile_interval(samples[metric]) if has_samples else (np.nan, np.nan)
                for j, k in enumerate(_percents(value)):
                    rows.append({"method": s.method, "kind": s.kind, "label": s.label, "reference": ref,
                                 "sign": s.sign, "metric": metric, "top_percent": k,
                                 "value": float(np.ravel(value)[j]), "chance": float(np.ravel(chance[metric])[j]),
                                 "ci_low": float(np.ravel(low)[j]), "ci_high": float(np.ravel(high)[j]),
                                 "n_subjects": s.n_subjects,
                                 "n_bootstrap": len(samples[metric]) if has_samples else 0})
    return rows


def paired_differences(scores: list[Scores], references: list[str]) -> pd.DataFrame:
    """Metric differences ``a - b`` of every pair of maps of a label, with paired bootstrap intervals."""
    rows = []
    for a, b in itertools.combinations(scores, 2):
        if a.label != b.label:
            continue
        for r, ref in enumerate(references):
            for metric in BOOTSTRAPPED:
                difference = np.asarray(a.point[r][metric], dtype=np.float64) - np.asarray(b.point[r][metric])
                da, db = a.samples[r][metric], b.samples[r][metric]
                if len(da) and len(da) == len(db):
                    low, high = percentile_interval(da - db)
                    n = len(da)
                else:
                    low = high = np.full(np.shape(difference), np.nan)
                    n = 0
                for j, k in enumerate(_percents(difference)):
                    rows.append({"label": a.label, "reference": ref, "method_a": a.method, "sign_a": a.sign,
                                 "method_b": b.method, "sign_b": b.sign, "metric": metric, "top_percent": k,
                                 "difference": float(np.ravel(difference)[j]), "ci_low": float(np.ravel(low)[j]),
                                 "ci_high": float(np.ravel(high)[j]), "n_bootstrap": n})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)


def _paired(pairs: pd.DataFrame, method: str, sign: str, other: str, other_sign: str) -> tuple[float, float, float]:
    """Difference ``method - other`` and its interval from the rows of either order (NaN when not scored)."""
    forward = pairs[(pairs["method_a"] == method) & (pairs["sign_a"] == sign)
                    & (pairs["method_b"] == other) & (pairs["sign_b"] == other_sign)]
    if len(forward):
        diff, low, high = forward.iloc[0][["difference", "ci_low", "ci_high"]]
        return float(diff), float(low), float(high)
    backward = pairs[(pairs["method_b"] == method) & (pairs["sign_b"] == sign)
                     & (pairs["method_a"] == other) & (pairs["sign_a"] == other_sign)]
    if len(backward):
        diff, low, high = backward.iloc[0][["difference", "ci_low", "ci_high"]]
        return -float(diff), -float(high), -float(low)
    return np.nan, np.nan, np.nan


def answer_table(overlap: pd.DataFrame, differences: pd.DataFrame, label: str,
                 metric: str = ANSWER_METRIC) -> pd.DataFrame:
    """Per heatmap method / SVM pattern, reference and sign: does the map find the reference?

    Parameters
    ----------
    overlap, differences : pandas.DataFrame
        ``overlap.tsv`` and ``overlap_differences.tsv`` rows.
    label : str
        Group of scans (``all``: both classes).
    metric : str
        Metric judged (a metric without top-k).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``reference``, ``sign``, ``metric``, ``value``, ``ci_low``, ``ci_high``,
        ``chance``, ``effect_over_chance`` (value - chance), ``above_chance`` (``ci_low > chance``),
        ``vs_input_magnitude`` (paired difference with the control), its ``vs_ci_low`` and ``vs_ci_high``,
        ``above_control`` (``vs_ci_low > 0``) and ``finds_reference`` (both); then, where the method's
        randomised-model control ``<method>Random`` was scored (``--sanity-check``), the paired difference
        with it (``vs_random``, ``vs_random_ci_low``, ``vs_random_ci_high``; NaN otherwise) and
        ``above_random`` (``vs_random_ci_low > 0``; empty without the control). ``above_random`` informs,
        it does not enter ``finds_reference``.
    """
    rows = overlap[(overlap["label"] == label) & (overlap["metric"] == metric) & (overlap["kind"] != "control")]
    out = []
    for row in rows.itertuples(index=False):
        pairs = differences[(differences["label"] == label) & (differences["reference"] == row.reference)
                            & (differences["metric"] == metric)]
        diff, low, high = _paired(pairs, row.method, row.sign, INPUT_MAGNITUDE, "absolute")
        random = _paired(pairs, row.method, row.sign, MapName(row.method, RANDOM_SUFFIX).desc, row.sign)
        above_chance = bool(row.ci_low > row.chance)
        above_control = bool(low > 0)
        out.append({"method": row.method, "reference": row.reference, "sign": row.sign, "metric": metric,
                    "value": row.value, "ci_low": row.ci_low, "ci_high": row.ci_high, "chance": row.chance,
                    "effect_over_chance": row.value - row.chance, "above_chance": above_chance,
                    "vs_input_magnitude": diff, "vs_ci_low": low, "vs_ci_high": high,
                    "above_control": above_control, "finds_reference": above_chance and above_control,
                    "vs_random": random[0], "vs_random_ci_low": random[1], "vs_random_ci_high": random[2],
                    "above_random": "" if np.isnan(random[1]) else bool(random[1] > 0)})
    return pd.DataFrame(out, columns=ANSWER_COLUMNS)
