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
* ``subject_overlap.tsv``, only where subjects have truths of their own (a
  simulated cohort): each subject's own map against its own truth, summarised
  over subjects per map, diagnosis and metric (:mod:`.subject_scores`);
* ``figures/desc-<Method>_overlap.png``: overlap against top-k % curves, with chance levels.

Each table has a JSON sidecar recording a hash of every input and parameter;
a rerun with the same hash skips the step.

:func:`run_evaluation` is four steps, each a seam for what comes next:
:func:`collect_references` (the reference maps of every reference kind:
:mod:`.references`, and each subject's own where a kind has them), scoring (:mod:`.scorer`: every map,
control and the SVM pattern on shared resamples), :func:`.tables.build_tables`
and :func:`.tables.write_tables` (the tables and their sidecars).
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np

from adheat_app.baseline.svm import output_paths
from adheat_app.bids import Derivatives, is_complete, software_versions
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.evaluation.answer import model_verdicts
from adheat_app.evaluation.group_maps import method_digest, read_predictions
from adheat_app.evaluation.overlap import TOP_PERCENT
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import Context
from adheat_app.evaluation.references._catalog import all_references, subject_references
from adheat_app.evaluation.scorer import SVM, Scorer, score_controls, score_methods, score_svm
from adheat_app.evaluation.tables import build_tables, table_names, write_tables
from adheat_app.inputs import input_key, load_inputs
from adheat_app.layout import group_table, heatmap_methods, sidecar_path
from adheat_app.templates import Template

LOGGER = logging.getLogger(__name__)


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
                  f"{config.execution.seed}|{TOP_PERCENT}|{model_verdicts(derivs.root)}|".encode())
    digest.update(input_key(cohort.scans, cohort.channels).encode())
    return digest.hexdigest()[:16]


def collect_references(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template
                       ) -> tuple[list[Reference], dict[str, str], dict[str, dict[str, Reference]]]:
    """Every reference map of this run to score, from every registered reference kind (:mod:`.references`: the
    user's map, the region prior, the simulated truth, the ALE of ``--reference-map`` foci, the cohort's own
    statistics per input channel); the uninformative ones, which are reported (name: reason) instead of
    scored; and each subject's own maps (reference name -> subject -> map; empty unless a kind has them: the
    simulated truth)."""
    context = Context(config, derivs, cohort, template)
    references = all_references(context)
    uninformative = {ref.name: ref.uninformative for ref in references if ref.uninformative}
    for name, reason in uninformative.items():
        LOGGER.info("reference %s is uninformative (%s); reported, not scored", name, reason)
    return [ref for ref in references if not ref.uninformative], uninformative, subject_references(context)


def run_evaluation(config: RunConfig, derivs: Derivatives, cohort: Cohort, template: Template) -> None:
    """Group maps, overlap scores with chance levels, controls and paired differences, region and distance tables.

    Parameters
    ----------
    config : RunConfig
        Run configuration (evaluation options, CNN model name, seed, overwrite).
    derivs : Derivatives
        Output dataset.
    cohort : Cohort
        The preprocessed cohort (its input channels: :attr:`~adheat_app.cohort.Cohort.channels`).
    template : Template
        Analysis template (grid, brain mask and grey-matter probability).
    """
    start = time.time()
    methods = heatmap_methods(derivs.root, template.space, template.res_label)
    pattern_path = output_paths(derivs, cohort)[0]
    has_svm = pattern_path.is_file()
    if not methods and not has_svm:
        LOGGER.warning("evaluation: no heatmaps and no SVM pattern in %s; nothing to evaluate", derivs.root)
        return
    references, uninformative, subject_truths = collect_references(config, derivs, cohort, template)
    correct = read_predictions(derivs, config.training.model)
    svm_sidecar = sidecar_path(pattern_path).read_text() if has_svm else ""
    per_subject = [ref for maps in subject_truths.values() for ref in maps.values()]
    digest = _evaluation_hash(config, derivs, cohort, methods, correct, references + per_subject, svm_sidecar)
    if not config.execution.overwrite and all(is_complete(group_table(derivs.root, name), EvaluationHash=digest)
                                              for name in table_names(bool(subject_truths))):
        LOGGER.info("evaluation: outputs complete for these inputs, skipping (--overwrite recomputes)")
        return
    scorer = Scorer(config, cohort, correct, references, template.mask_array(), subject_truths)
    scored = score_methods(scorer, config, derivs, cohort, template, methods, correct)
    inputs = load_inputs(cohort.scans, cohort.channels, config.work_dir)
    prior_source = score_controls(scorer, config, cohort, template, inputs)
    if has_svm:
        score_svm(scorer, scored, derivs, cohort, inputs)
    tables = build_tables(scorer, scored, template, config, derivs)
    common = {"EvaluationHash": digest, "References": [ref.describe() for ref in references],
              "UninformativeReferences": uninformative,
              "Methods": methods + ([SVM] if has_svm else []), "Subjects": scored.n_subjects,
              "Template": template.describe(), "Seed": config.execution.seed, "Software": software_versions()}
    if subject_truths:
        first = {name: next(iter(maps.values())) for name, maps in subject_truths.items()}
        common["SubjectReferences"] = {name: {"Subjects": sorted(maps), "Threshold": first[name].threshold,
                                              "Description": first[name].description}
                                       for name, maps in subject_truths.items()}
    write_tables(derivs, tables, common, config, prior_source)
    LOGGER.info("evaluation done in %.1f s: %d method(s), %d reference(s)", time.time() - start,
                len(methods) + has_svm, len(references))
