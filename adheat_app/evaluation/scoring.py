"""Scores of every map on shared bootstrap resamples: the overlap rows and the paired differences.

Every map of a group of scans (``label``) — each heatmap method, the SVM
pattern, the controls of :mod:`.controls` — is scored on the *same* bootstrap
resamples of that group's subjects, so the difference of two maps' metrics
has a paired interval (:func:`paired_differences`). Values and differences are
reported as :mod:`.intervals` estimates them: ``value`` (``difference``) is the
bias-corrected estimate inside its basic bootstrap interval, ``map_value``
(``map_difference``) the metric of the written mean map itself.

With ``--repeats R`` > 1 a map made by the trained models (a method's maps,
``BaselineDeviation``) exists once per repeat: its ``map_value`` is the mean
over repeats of each repeat's mean-map metric, and each resample scores the
mean map of its resampled subjects in the one repeat it drew
(:func:`adheat_app.evaluation.overlap.repeat_draws`; every map of a label
shares the draws), so the interval holds the repeat-to-repeat variation of
training. ``overlap.tsv`` then has an ``n_repeats`` column: ``R`` for those
maps, 1 for maps the same in every repeat (``InputMagnitude``, the grey-matter
prior, the SVM pattern, maps computed for repeat 0 only).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from adheat_app.evaluation.intervals import basic_interval, two_sided_p
from adheat_app.evaluation.overlap import BOOTSTRAPPED, TOP_PERCENT

#: How a signed map is scored: ``absolute`` value, or ``positive`` part (evidence for the explained class).
SIGNS = ("absolute", "positive")
OVERLAP_COLUMNS = ["method", "kind", "label", "reference", "sign", "metric", "top_percent", "value", "map_value",
                   "chance", "ci_low", "ci_high", "n_subjects", "n_bootstrap"]
#: The column ``overlap.tsv`` adds with ``--repeats`` > 1: the repeats a map's value and resamples come from.
REPEATS_COLUMN = "n_repeats"
DIFFERENCE_COLUMNS = ["label", "reference", "method_a", "sign_a", "method_b", "sign_b", "metric", "top_percent",
                      "difference", "map_difference", "ci_low", "ci_high", "p_value", "n_bootstrap"]


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
    n_repeats : int
        Repeats of ``--repeats`` whose maps ``point`` averages and ``samples`` draw from (1: a map the same in
        every repeat).
    centres : list of dict or None
        With ``n_repeats`` > 1, per reference: the value of the repeat each resample drew, shaped as ``samples``
        (the ``centres`` of :func:`.intervals.basic_interval`); None otherwise.
    """

    method: str
    kind: str
    label: str
    sign: str
    n_subjects: int | None
    point: list[dict]
    samples: list[dict]
    n_repeats: int = 1
    centres: list[dict] | None = None

    def centre(self, r: int, metric: str) -> np.ndarray:
        """The repeat values of reference ``r``'s resamples of ``metric`` (the point value on each, without
        repeats)."""
        if self.centres is not None:
            return self.centres[r][metric]
        return np.broadcast_to(np.asarray(self.point[r][metric], dtype=np.float64), np.shape(self.samples[r][metric]))


def constant_samples(point: list[dict], n_resamples: int) -> list[dict]:
    """Samples of a map that does not depend on the scans: its point value on every resample."""
    return [{m: np.broadcast_to(np.asarray(values[m], dtype=np.float64),
                                (n_resamples, *np.shape(values[m]))).copy() for m in BOOTSTRAPPED}
            for values in point]


def _percents(value) -> tuple:
    return TOP_PERCENT if np.ndim(value) else (None,)


def overlap_rows(scores: list[Scores], references: list[str], chances: list[dict], repeats: bool = False
                 ) -> pd.DataFrame:
    """One row per map, reference, metric and top-k: estimate, map value, chance level, 95 % basic interval
    (``repeats``: and the :data:`REPEATS_COLUMN` of each map)."""
    rows = []
    for s in scores:
        for r, (ref, chance, point, samples) in enumerate(zip(references, chances, s.point, s.samples)):
            for metric, value in point.items():
                n = len(samples[metric]) if metric in samples else 0
                centres = s.centres[r][metric] if s.centres is not None and n else None
                estimate, low, high = basic_interval(value, samples[metric] if n else np.empty((0,)),
                                                     centres=centres)
                for j, k in enumerate(_percents(value)):
                    rows.append({"method": s.method, "kind": s.kind, "label": s.label, "reference": ref,
                                 "sign": s.sign, "metric": metric, "top_percent": k,
                                 "value": float(np.ravel(estimate)[j]), "map_value": float(np.ravel(value)[j]),
                                 "chance": float(np.ravel(chance[metric])[j]),
                                 "ci_low": float(np.ravel(low)[j]), "ci_high": float(np.ravel(high)[j]),
                                 "n_subjects": s.n_subjects, "n_bootstrap": n, REPEATS_COLUMN: s.n_repeats})
    return pd.DataFrame(rows, columns=OVERLAP_COLUMNS + ([REPEATS_COLUMN] if repeats else []))


def paired_differences(scores: list[Scores], references: list[str]) -> pd.DataFrame:
    """Metric differences ``a - b`` of every pair of maps of a label, with paired basic intervals and p-values.

    ``difference`` is the bias-corrected estimate (with repeats: of the difference of the repeats' values on the
    shared draws of repeats), ``map_difference`` the difference of the two maps' own metrics, ``p_value`` the two-sided bootstrap p-value of "no difference" (:func:`.intervals.two_sided_p`).
    """
    rows = []
    for a, b in itertools.combinations(scores, 2):
        if a.label != b.label:
            continue
        for r, ref in enumerate(references):
            for metric in BOOTSTRAPPED:
                difference = np.asarray(a.point[r][metric], dtype=np.float64) - np.asarray(b.point[r][metric])
                da, db = a.samples[r][metric], b.samples[r][metric]
                n = len(da) if len(da) and len(da) == len(db) else 0
                samples = da - db if n else np.empty((0,))
                repeated = n and (a.centres is not None or b.centres is not None)
                centres = a.centre(r, metric) - b.centre(r, metric) if repeated else None
                estimate, low, high = basic_interval(difference, samples, bounds=(-1.0, 1.0), centres=centres)
                p_value = two_sided_p(difference, samples)
                for j, k in enumerate(_percents(difference)):
                    rows.append({"label": a.label, "reference": ref, "method_a": a.method, "sign_a": a.sign,
                                 "method_b": b.method, "sign_b": b.sign, "metric": metric, "top_percent": k,
                                 "difference": float(np.ravel(estimate)[j]),
                                 "map_difference": float(np.ravel(difference)[j]), "ci_low": float(np.ravel(low)[j]),
                                 "ci_high": float(np.ravel(high)[j]), "p_value": float(np.ravel(p_value)[j]),
                                 "n_bootstrap": n})
    return pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
