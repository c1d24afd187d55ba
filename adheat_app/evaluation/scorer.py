"""Scoring of the evaluation step: every map of every label on that label's shared bootstrap resamples.

:class:`Scorer` holds the reference maps on the brain mask and, per label
(``<positive>``, ``<negative>``, ``all``), the scans and their bootstrap
resamples; each map scored on it adds one :class:`~.scoring.Scores`. The
scored maps are the heatmap methods (:func:`score_methods`, which also writes
their group maps and overlap curve figures), the controls
(:func:`score_controls`: input magnitude and baseline deviation, summed and per
channel, and the grey-matter prior; a method's ``Random`` maps are scored as
methods of kind ``control``) and the SVM pattern (:func:`score_svm`: one
estimator for value and resamples). The resamples are of subjects (a
subject's sessions together). Where subjects have truths of their own, the
same per-scan maps (methods and controls) are also scored each against its own
subject's truth (:attr:`Scorer.per_subject`, :mod:`.subject_scores`; repeat 0's
maps). A new kind of scored map is one more function here.

With ``--repeats R`` > 1 each resample of a label also draws one repeat
(:func:`~adheat_app.evaluation.overlap.repeat_draws`, shared by every map of
the label): a map made by the trained models is scored once per repeat
(:meth:`Scorer.subjects` with ``repeat``), its value the mean over repeats of
its repeat's mean-map metrics and each resample the metric of the resampled
mean map of the repeat drawn (:mod:`.scoring`). The methods' maps of repeat
``r`` > 0 are read from :func:`~adheat_app.layout.repeat_root`; the written
group maps, curves, region and distance tables and spatial nulls use repeat 0's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from adheat_app.baseline.svm import output_paths
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.chance import chance_levels
from adheat_app.evaluation.controls import (
    BASELINE_DEVIATION, GREY_MATTER_PRIOR, INPUT_MAGNITUDE, fold_baselines, grey_matter_prior, input_controls,
    is_control, svm_pattern_resamples,
)
from adheat_app.evaluation.group_maps import ALL, MethodMaps, load_method, scan_groups, write_group_maps
from adheat_app.evaluation.intervals import basic_interval
from adheat_app.evaluation.overlap import (
    BOOTSTRAPPED, TOP_PERCENT, bootstrap, overlap_metrics, repeat_draws, resample_counts, score_resamples,
    sorted_metrics,
)
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.scoring import Scores, constant_samples
from adheat_app.evaluation.subject_scores import SubjectScorer
from adheat_app.layout import MapName, heatmap_methods, overlap_figure, repeat_root, to_label
from adheat_app.plotting import overlap_curves, save_png
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)

SVM = "SVM"
#: k values (%) of the overlap curve figures.
CURVE_PERCENT: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50)


class Scorer:
    """Scores maps of each label on that label's shared bootstrap resamples (of subjects, and of repeats with
    ``n_repeats`` > 1).

    ``subject_truths`` (reference name -> subject -> map; empty without per-subject truths) makes
    :attr:`per_subject`, which scores each scan's own map (repeat 0's) against its subject's truth.
    """

    def __init__(self, config: RunConfig, cohort: Cohort, correct: dict[str, int], references: list[Reference],
                 mask: np.ndarray, subject_truths: dict[str, dict[str, Reference]] | None = None, *,
                 n_repeats: int = 1):
        self.references = references
        self.mask = mask
        self.names = [ref.name for ref in references]
        self.binaries = [ref.binary()[mask] for ref in references]
        self.continuous = [ref.values[mask] for ref in references]
        n_voxels = int(mask.sum())
        self.chances = [chance_levels(float(b.mean()), n_voxels) for b in self.binaries]
        self.curve_chance = {ref.name: chance_levels(float(b.mean()), n_voxels, CURVE_PERCENT)
                             for ref, b in zip(references, self.binaries)}
        positive, negative = cohort.positive_label, cohort.negative_label
        labels = [to_label(positive), to_label(negative), ALL]
        self.keys = {label: [s.key for s in cohort.scans if label in scan_groups(s, correct, positive, negative)]
                     for label in labels}
        self.keys = {label: keys for label, keys in self.keys.items() if keys}
        n_bootstrap, seed = config.evaluation.n_bootstrap, config.execution.seed
        subject = {s.key: s.subject for s in cohort.scans}
        self.counts = {label: resample_counts([subject[k] for k in keys],
                                              n_bootstrap if len({subject[k] for k in keys}) > 1 else 0, seed + i)
                       for i, (label, keys) in enumerate(self.keys.items())}
        self.columns = {label: {key: j for j, key in enumerate(keys)} for label, keys in self.keys.items()}
        self.n_repeats = n_repeats
        #: The repeat each resample of a label scores.
        self.draws = {label: repeat_draws(len(counts), n_repeats, seed + i)
                      for i, (label, counts) in enumerate(self.counts.items())}
        self.scores: list[Scores] = []
        self.per_subject = SubjectScorer(subject_truths, cohort, mask) if subject_truths else None
        #: Maps scored on some of their repeats so far: their repeats' points, samples, centres and scans.
        self._repeats: dict[tuple[str, str, str, str], tuple[list[list[dict]], list[dict], list[dict], int]] = {}

    def points(self, mean: np.ndarray) -> list[dict]:
        """Metrics of one map against every reference."""
        return [overlap_metrics(mean, b, c) for b, c in zip(self.binaries, self.continuous)]

    def subjects(self, method: str, kind: str, label: str, sign: str, maps: np.ndarray, keys: list[str],
                 repeat: int | None = None) -> np.ndarray:
        """Score the mean of per-scan ``maps`` (rows: scans ``keys`` of ``label``); return the mean.

        ``repeat``: the repeat of ``--repeats`` the maps come from, for a map made once per repeat (None: the
        same in every repeat). Such a map is scored on the resamples that draw its repeat, and its
        :class:`~.scoring.Scores` added once all :attr:`n_repeats` repeats are in (see the module docstring).
        """
        mean = maps.mean(axis=0)
        counts = self.counts[label][:, [self.columns[label][k] for k in keys]]
        if repeat is None or self.n_repeats == 1:
            samples = bootstrap(maps, self.binaries, counts)
            self.scores.append(Scores(method, kind, label, sign, len(keys), self.points(mean), samples))
            return mean
        point = self.points(mean)

        def empty() -> list[dict]:
            return [{m: np.full((len(counts), *np.shape(p[m])), np.nan) for m in BOOTSTRAPPED} for p in point]

        points, samples, centres, n_subjects = self._repeats.setdefault((method, kind, label, sign),
                                                                        ([], empty(), empty(), len(keys)))
        points.append(point)
        drawn = self.draws[label] == repeat
        if drawn.any():
            for r, scored in enumerate(bootstrap(maps, self.binaries, counts[drawn])):
                for metric, values in scored.items():
                    samples[r][metric][drawn] = values
                    centres[r][metric][drawn] = point[r][metric]
        if len(points) == self.n_repeats:
            del self._repeats[(method, kind, label, sign)]
            mean_point = [{m: np.mean([p[r][m] for p in points], axis=0) for m in point[r]}
                          for r in range(len(point))]
            self.scores.append(Scores(method, kind, label, sign, n_subjects, mean_point, samples, self.n_repeats,
                                      centres))
        return mean

    def discard(self, method: str) -> list[str]:
        """Forget the repeats of ``method`` scored so far (a repeat without usable maps); return their labels."""
        keys = [key for key in self._repeats if key[0] == method]
        for key in keys:
            del self._repeats[key]
        return sorted({key[2] for key in keys})

    def constant(self, method: str, kind: str, label: str, values: np.ndarray, samples: list[dict] | None = None,
                 n_subjects: int | None = None) -> None:
        """Score one map of ``label`` (samples: the map's own resamples, else its value on every resample)."""
        point = self.points(values)
        if samples is None:
            samples = constant_samples(point, len(self.counts[label]))
        self.scores.append(Scores(method, kind, label, "absolute", n_subjects, point, samples))

    def curves(self, relevance: np.ndarray) -> dict:
        """Dice and overlap fraction at every k of :data:`CURVE_PERCENT`, per reference."""
        metrics = sorted_metrics(relevance[None], self.binaries, CURVE_PERCENT)
        return {ref.name: {k: v[0] for k, v in m.items()} for ref, m in zip(self.references, metrics)}


@dataclass
class ScoredMaps:
    """The mean maps the region and distance tables need, and the scans behind each method's group maps."""

    #: Mean map of each (method, label), for the region table.
    region_maps: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    #: Mean maps of each label by method, for the distance table.
    label_maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: Scans in each method's group maps, per label.
    n_subjects: dict[str, dict[str, int]] = field(default_factory=dict)


def repeat_roots(config: RunConfig, n_repeats: int) -> list[Path]:
    """Folders of the per-scan maps of repeats 1 to ``n_repeats - 1`` (:func:`~adheat_app.layout.repeat_root`)."""
    return [repeat_root(config.models_dir, config.training.model, r) for r in range(1, n_repeats)]


def _score_repeat(scorer: Scorer, maps: MethodMaps, kind: str, repeat: int | None) -> dict[str, np.ndarray]:
    """Score one repeat's maps of a method per label and sign (``repeat`` as :meth:`Scorer.subjects`); return the
    absolute mean map of each label."""
    means = {}
    for label in (label for label in scorer.keys if label in maps.groups):
        rows = maps.groups[label]
        keys = [maps.scans[i].key for i in rows]
        means[label] = scorer.subjects(maps.method, kind, label, "absolute", maps.values[rows], keys, repeat)
        if maps.positive is not None:
            scorer.subjects(maps.method, kind, label, "positive", maps.positive[rows], keys, repeat)
    return means


def score_methods(scorer: Scorer, config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template,
                  methods: list[str], correct: dict[str, int]) -> ScoredMaps:
    """Write each method's group maps, score its mean maps per label and sign, draw its overlap curves.

    ``correct``: whether the CNN classified each scan correctly (:func:`.group_maps.read_predictions`). With
    several repeats a method with maps in every repeat is scored on each (one repeat's maps in memory at a time);
    one with maps of repeat 0 only (e.g. the sanity check's) as a map the same in every repeat.
    """
    scored = ScoredMaps()
    roots = repeat_roots(config, scorer.n_repeats)
    found = [set(heatmap_methods(root, template.space, template.res_label)) for root in roots]
    for method in methods:
        maps = load_method(derivs, cohort, template, method, correct)
        if maps is None:
            continue
        write_group_maps(derivs, template, maps, config.execution.overwrite)
        scored.n_subjects[method] = {label: len(rows) for label, rows in maps.groups.items()}
        kind = "control" if is_control(method) else "method"
        if scorer.per_subject is not None:
            keys = [scan.key for scan in maps.scans]
            scorer.per_subject.score(method, kind, "absolute", keys, maps.values)
            if maps.positive is not None:
                scorer.per_subject.score(method, kind, "positive", keys, maps.positive)
        repeated = bool(roots) and all(method in names for names in found)
        means = _score_repeat(scorer, maps, kind, 0 if repeated else None)
        n_scans = len(maps.scans)
        del maps
        for repeat, root in enumerate(roots if repeated else [], start=1):
            other = load_method(derivs, cohort, template, method, correct, root)
            if other is None:
                LOGGER.warning("evaluation: %s has no usable map of repeat %d in %s; scored on repeat 0 only",
                               method, repeat, root)
                scorer.discard(method)
                _score_repeat(scorer, load_method(derivs, cohort, template, method, correct), kind, None)
                break
            _score_repeat(scorer, other, kind, repeat)
            del other
        incomplete = scorer.discard(method)
        if incomplete:
            LOGGER.warning("evaluation: %s has no usable map of some repeat in group(s) %s; those rows are left out",
                           method, ", ".join(incomplete))
        if kind == "method":
            for label, mean in means.items():
                scored.region_maps[(method, label)] = mean
                scored.label_maps.setdefault(label, {})[method] = mean
        if ALL in means:
            _method_curves(scorer, derivs, method, means[ALL])
        LOGGER.info("evaluation: %s done (%d subjects%s)", method, n_scans,
                    f", {scorer.n_repeats} repeats" if repeated else "")
    return scored


def _method_curves(scorer: Scorer, derivs: Derivatives, method: str, mean: np.ndarray) -> None:
    """The overlap curves of a method's label-``all`` mean map, with its bootstrap intervals at the top k."""
    scored = next(s for s in reversed(scorer.scores) if s.method == method and s.label == ALL
                  and s.sign == "absolute")
    intervals = {name: {m: (TOP_PERCENT, *basic_interval(scored.point[r][m], scored.samples[r][m])[1:])
                        for m in ("dice", "overlap_fraction")}
                 for r, name in enumerate(scorer.names) if len(scored.samples[r]["dice"])}
    save_png(overlap_curves(method, CURVE_PERCENT, scorer.curves(mean), intervals, scorer.curve_chance),
             overlap_figure(derivs.root, method))


def _deviation_maps(values: np.ndarray, rows: list[int], channels: tuple[str, ...],
                    baselines: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """The baseline-deviation maps (name -> ``(n, V)``) of the scans ``rows`` whose masked inputs are ``values``."""
    means, position = baselines
    return input_controls(np.abs(values - means[position[rows]]), channels, BASELINE_DEVIATION)


def _input_control_maps(inputs: np.ndarray, rows: list[int], mask: np.ndarray, channels: tuple[str, ...],
                        baselines: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The per-scan maps of the input controls of the scans ``rows`` of ``inputs`` (name -> ``(n, V)``)."""
    values = np.asarray(inputs[rows][:, :, mask], dtype=np.float32)
    controls = input_controls(np.abs(values), channels, INPUT_MAGNITUDE)
    if baselines is not None:
        controls.update(_deviation_maps(values, rows, channels, baselines))
    return controls


def score_controls(scorer: Scorer, config: RunConfig, cohort: Cohort, template: Template, inputs: np.ndarray) -> str:
    """Score the controls of every label (input magnitude and, once folds are trained, baseline deviation of the
    cohort's ``inputs``, summed and per channel; the grey-matter prior), and of every scan against its own
    subject's truth where there is one (repeat 0's baselines); return where the prior comes from.

    With several repeats the baseline deviation, whose baselines are the fold models' training means, is scored
    once per repeat (on the resamples drawing it), as the methods' maps.
    """
    index = {s.key: i for i, s in enumerate(cohort.scans)}
    baselines = [fold_baselines(config, cohort, inputs, scorer.mask, repeat) for repeat in range(scorer.n_repeats)]
    if any(b is None for b in baselines[1:]):
        baselines = baselines[:1]
    repeated = len(baselines) > 1
    for label, keys in scorer.keys.items():
        rows = [index[k] for k in keys]
        values = np.asarray(inputs[rows][:, :, scorer.mask], dtype=np.float32)
        for name, maps in input_controls(np.abs(values), cohort.channels, INPUT_MAGNITUDE).items():
            scorer.subjects(name, "control", label, "absolute", maps, keys)
        for repeat, baseline in enumerate(b for b in baselines if b is not None):
            deviation = _deviation_maps(values, rows, cohort.channels, baseline)
            for name, maps in deviation.items():
                scorer.subjects(name, "control", label, "absolute", maps, keys, repeat if repeated else None)
            del deviation
        del values
    prior, prior_source = grey_matter_prior(template)
    for label in scorer.keys:
        scorer.constant(GREY_MATTER_PRIOR, "control", label, prior)
    per_subject = scorer.per_subject
    if per_subject is not None:
        keys = per_subject.keys
        controls = _input_control_maps(inputs, [index[k] for k in keys], scorer.mask, cohort.channels, baselines[0])
        for name, maps in controls.items():
            per_subject.score(name, "control", "absolute", keys, maps)
        per_subject.constant(GREY_MATTER_PRIOR, "control", prior)
    return prior_source


def _svm_pattern(scorer: Scorer, inputs: np.ndarray, derivs: Derivatives, cohort: Cohort
                 ) -> tuple[np.ndarray, list[dict]] | None:
    """The scored SVM pattern (all subjects) and its bootstrap scores on the label-``all`` resamples of subjects
    (None without a weight map): one estimator for both.

    With several input channels the features are every channel's voxels and the weights are read from the
    per-channel weight maps; each pattern is the sum of its channels' patterns, as the written map.
    """
    channels, mask = cohort.channels, scorer.mask
    paths = [output_paths(derivs, cohort, name if len(channels) > 1 else None)[1] for name in channels]
    if not all(p.is_file() for p in paths) or ALL not in scorer.keys:
        return None
    index = {s.key: i for i, s in enumerate(cohort.scans)}
    rows = [index[k] for k in scorer.keys[ALL]]
    features = np.asarray(inputs[rows][:, :, mask], dtype=np.float32).reshape(len(rows), -1)
    features -= features.mean(axis=0)
    sd = features.std(axis=0)
    features /= np.where(sd > 0, sd, 1.0)
    weights = np.concatenate([np.asarray(nib.load(p).dataobj, dtype=np.float32)[mask] for p in paths])
    pattern = next(svm_pattern_resamples(features, weights, np.ones((1, len(rows))), len(channels)))[0]
    return pattern, score_resamples(svm_pattern_resamples(features, weights, scorer.counts[ALL], len(channels)),
                                    scorer.binaries)


def score_svm(scorer: Scorer, scored: ScoredMaps, derivs: Derivatives, cohort: Cohort, inputs: np.ndarray) -> None:
    """Score the SVM's absolute activation pattern (label ``all``), draw its curves, add it to the region and
    distance tables of every label."""
    pattern = np.abs(np.asarray(nib.load(output_paths(derivs, cohort)[0]).dataobj, dtype=np.float64))[scorer.mask]
    total = pattern.sum()
    pattern = pattern / total if total > 0 else pattern
    estimated = _svm_pattern(scorer, inputs, derivs, cohort)
    if ALL in scorer.keys:
        scorer.constant(SVM, "baseline", ALL, *(estimated or (pattern, None)), len(scorer.keys[ALL]))
    save_png(overlap_curves(f"{SVM} pattern", CURVE_PERCENT, scorer.curves(pattern), chance=scorer.curve_chance),
             overlap_figure(derivs.root, MapName(SVM).desc))
    for label in scored.label_maps or {ALL: {}}:
        scored.region_maps[(SVM, label)] = pattern
        scored.label_maps.setdefault(label, {})[SVM] = pattern
