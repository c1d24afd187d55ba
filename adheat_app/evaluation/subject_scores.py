"""Subject-level overlap: each subject's own out-of-fold map against that subject's own truth, summarised.

The group-map scores (:mod:`.scorer`) ask whether the *mean* map of a group
finds the group's reference (for a simulated cohort, the cohort map: the mean
over the AD subjects of their planted atrophy). Where each subject has a truth
of its own (:meth:`~adheat_app.evaluation.references._contract.ReferenceKind.load_subjects`:
the simulator's region maps), a second question can be asked: does a subject's
*own* map find *its own* atrophy? Subjects differ in the regions they lose
(subtypes, asymmetry, severity), and a mean map can match the cohort map while
single maps are too noisy, or all alike, to match their subjects.

:class:`SubjectScorer` scores every scan of a subject with a truth (its
``label`` is its diagnosis, so AD and MCI are reported apart) with the
metrics of :mod:`.overlap`, one map at a time: each heatmap method (absolute,
and the positive part of signed maps) and each control of :mod:`.controls`
(input magnitude, baseline deviation, the grey-matter prior, a method's
model-free maps); the SVM pattern is one map of the cohort, not of a subject,
and is not scored here. A subject's scans (sessions) are averaged into one
value. :meth:`SubjectScorer.table` summarises per map, label, reference,
metric and top-k:

* ``subject_mean``: the mean over subjects; ``value``: the bias-corrected
  estimate inside its 95 % basic bootstrap interval over subjects
  (``ci_low``, ``ci_high``; :mod:`.intervals`), the subject being the
  resampling unit and every map of a label drawn on the same resamples;
* ``chance``: the mean over the same subjects of each truth's own chance
  level (:mod:`.chance`; truths differ in size);
* for heatmap maps, ``control``: the strongest applicable control
  (:func:`.answer.strongest_control`, on these estimates) and ``vs_control``:
  the mean over subjects of the map's score minus the control's (paired per
  subject), with its interval and two-sided bootstrap p-value
  (:func:`.intervals.two_sided_p`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from adheat_app.cohort import Cohort
from adheat_app.evaluation.answer import strongest_control
from adheat_app.evaluation.chance import chance_levels
from adheat_app.evaluation.intervals import basic_interval, two_sided_p
from adheat_app.evaluation.overlap import TOP_PERCENT, overlap_metrics, resample_counts
from adheat_app.evaluation.reference import Reference
from adheat_app.layout import to_label

SUBJECT_COLUMNS = ["method", "kind", "label", "reference", "sign", "metric", "top_percent", "value", "subject_mean",
                   "chance", "ci_low", "ci_high", "control", "vs_control", "vs_control_ci_low", "vs_control_ci_high",
                   "p_control", "n_subjects", "n_bootstrap"]
#: Metrics bounded in [-1, 1] rather than [0, 1].
SIGNED_METRICS = ("spearman",)


@dataclass(frozen=True)
class _Truth:
    """One subject's truth inside the brain mask and its chance levels."""

    binary: np.ndarray
    values: np.ndarray
    chance: dict


def resampled_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean over subjects of per-subject ``values`` ``(n, ...)`` on each resample ``counts`` ``(B, n)``.

    Subjects without a value (NaN) are left out of each mean; a resample that draws none of the others is NaN.
    """
    valid = np.isfinite(values)
    total = np.tensordot(counts, np.where(valid, values, 0.0), axes=(1, 0))
    weight = np.tensordot(counts, valid.astype(np.float64), axes=(1, 0))
    return np.where(weight > 0, total / np.where(weight > 0, weight, 1.0), np.nan)


def summarise(values: np.ndarray, counts: np.ndarray, bounds: tuple[float, float]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over subjects, bias-corrected estimate, basic interval and p-value of "0" of per-subject ``values``."""
    valid = np.isfinite(values)
    n = valid.sum(axis=0)
    mean = np.where(n > 0, np.where(valid, values, 0.0).sum(axis=0) / np.maximum(n, 1), np.nan)
    samples = resampled_means(values, counts) if len(counts) else np.empty((0,))
    estimate, low, high = basic_interval(mean, samples, bounds)
    return mean, estimate, low, high, two_sided_p(mean, samples)


class SubjectScorer:
    """Scores each scan's map against its own subject's truth and summarises per map (see the module docstring).

    Parameters
    ----------
    truths : dict
        Reference name -> subject label -> that subject's map on the analysis grid.
    cohort : Cohort
        The scans (their subjects and diagnoses).
    mask : numpy.ndarray
        Brain mask (bool, analysis grid).
    """

    def __init__(self, truths: dict[str, dict[str, Reference]], cohort: Cohort, mask: np.ndarray):
        n_voxels = int(mask.sum())
        self.truths = {name: {subject: _Truth(ref.binary()[mask], ref.values[mask],
                                              chance_levels(float(ref.binary()[mask].mean()), n_voxels))
                              for subject, ref in maps.items()} for name, maps in truths.items()}
        subjects = {subject for maps in truths.values() for subject in maps}
        #: Scan key -> (subject, label) of every scan with a truth, in cohort order.
        self.scans = {s.key: (s.subject, to_label(s.diagnosis or "unknown")) for s in cohort.scans
                      if s.subject in subjects}
        #: (method, kind, sign) -> reference -> subject -> the metrics of each of its scans.
        self.scores: dict[tuple[str, str, str], dict[str, dict[str, list[dict]]]] = {}

    @property
    def keys(self) -> list[str]:
        """The scans with a truth (the rows of the control maps to score)."""
        return list(self.scans)

    def score(self, method: str, kind: str, sign: str, keys: list[str], maps: np.ndarray) -> None:
        """Score each row of ``maps`` ``(n, V)`` (scans ``keys``; those without a truth are skipped)."""
        scored = self.scores.setdefault((method, kind, sign), {})
        for key, row in zip(keys, maps):
            if key not in self.scans:
                continue
            subject = self.scans[key][0]
            for name, truths in self.truths.items():
                if subject in truths:
                    truth = truths[subject]
                    metrics = overlap_metrics(row, truth.binary, truth.values)
                    scored.setdefault(name, {}).setdefault(subject, []).append(metrics)

    def constant(self, method: str, kind: str, values: np.ndarray) -> None:
        """Score one map that is the same for every subject (the grey-matter prior), once per subject."""
        first = {}
        for key, (subject, _) in self.scans.items():
            first.setdefault(subject, key)
        keys = list(first.values())
        self.score(method, kind, "absolute", keys, np.broadcast_to(values, (len(keys), len(values))))

    def _labels(self) -> dict[str, list[str]]:
        """Subjects per label (diagnosis), sorted."""
        labels: dict[str, set[str]] = {}
        for subject, label in self.scans.values():
            labels.setdefault(label, set()).add(subject)
        return {label: sorted(subjects) for label, subjects in sorted(labels.items())}

    def _values(self, scored: dict[str, list[dict]], subjects: list[str], metric: str) -> np.ndarray:
        """Per-subject value of ``metric`` ``(n, ...)``: the mean over the subject's scans, NaN when unscored."""
        template = next(iter(scored.values()))[0][metric]
        out = np.full((len(subjects), *np.shape(template)), np.nan)
        for i, subject in enumerate(subjects):
            if subject in scored:
                out[i] = np.mean([np.asarray(m[metric], dtype=np.float64) for m in scored[subject]], axis=0)
        return out

    def table(self, n_bootstrap: int, seed: int) -> pd.DataFrame:
        """The summary rows (:data:`SUBJECT_COLUMNS`) of every map, label, reference, metric and top-k."""
        frames = []
        for i, (label, subjects) in enumerate(self._labels().items()):
            counts = resample_counts(subjects, n_bootstrap if len(subjects) > 1 else 0, seed + i)
            for name, truths in self.truths.items():
                values = {key: {metric: self._values(scored[name], subjects, metric)
                                for metric in next(iter(scored[name].values()))[0]}
                          for key, scored in self.scores.items() if scored.get(name)
                          and any(subject in scored[name] for subject in subjects)}
                if values:
                    frames.append(self._summary(label, name, [truths.get(s) for s in subjects], values, counts))
        if not frames:
            return pd.DataFrame(columns=SUBJECT_COLUMNS)
        return pd.concat(frames, ignore_index=True)[SUBJECT_COLUMNS]

    @staticmethod
    def _summary(label: str, reference: str, truths: list[_Truth | None], values: dict, counts: np.ndarray
                 ) -> pd.DataFrame:
        """Rows of one label and reference; then each heatmap row's paired difference with its strongest control."""
        rows = []
        for (method, kind, sign), metrics in values.items():
            for metric, per_subject in metrics.items():
                bounds = (-1.0, 1.0) if metric in SIGNED_METRICS else (0.0, 1.0)
                mean, estimate, low, high, _ = summarise(per_subject, counts, bounds)
                valid = np.isfinite(per_subject)
                chances = np.stack([np.broadcast_to(t.chance[metric], per_subject.shape[1:]) if t is not None
                                    else np.full(per_subject.shape[1:], np.nan) for t in truths])
                chance = np.nanmean(np.where(valid, chances, np.nan), axis=0)
                for j, k in enumerate(TOP_PERCENT if np.ndim(mean) else (None,)):
                    rows.append({"method": method, "kind": kind, "label": label, "reference": reference,
                                 "sign": sign, "metric": metric, "top_percent": k,
                                 "value": float(np.ravel(estimate)[j]), "subject_mean": float(np.ravel(mean)[j]),
                                 "chance": float(np.ravel(chance)[j]), "ci_low": float(np.ravel(low)[j]),
                                 "ci_high": float(np.ravel(high)[j]), "n_subjects": int(np.ravel(valid.sum(axis=0))[j]),
                                 "n_bootstrap": len(counts), "k_index": j})
        table = pd.DataFrame(rows)
        return _with_controls(table, values, counts)


def _with_controls(table: pd.DataFrame, values: dict, counts: np.ndarray) -> pd.DataFrame:
    """Add each heatmap row's strongest applicable control and the paired per-subject difference with it."""
    per_map = {method: metrics for (method, kind, sign), metrics in values.items() if kind == "control"
               and sign == "absolute"}
    out: dict[str, list] = {column: [] for column in ("control", "vs_control", "vs_control_ci_low",
                                                      "vs_control_ci_high", "p_control")}
    groups = table.groupby(["metric", "k_index"], sort=False, dropna=False)
    same = {key: rows[rows["sign"] == "absolute"] for key, rows in groups}
    for row in table.itertuples(index=False):
        control = strongest_control(same[(row.metric, row.k_index)], row.method) if row.kind != "control" else None
        if control is None or control not in per_map:
            for column in out:
                out[column].append("" if column == "control" else np.nan)
            continue
        mine = values[(row.method, row.kind, row.sign)][row.metric]
        theirs = per_map[control][row.metric]
        difference = (mine - theirs).reshape(len(mine), -1)[:, row.k_index]
        bounds = (-2.0, 2.0) if row.metric in SIGNED_METRICS else (-1.0, 1.0)
        _, estimate, low, high, p_value = summarise(difference, counts, bounds)
        for column, value in zip(out, (control, estimate, low, high, p_value)):
            out[column].append(value if column == "control" else float(value))
    return table.assign(**out).drop(columns="k_index")
