"""Group level: cross-validated CNN, SVM baseline, out-of-fold heatmaps, scores and report.

After one participant pass this level gives the complete result: it trains the
folds that are missing (or only ``--fold K``, for one scheduler job per fold),
fits the linear SVM and the covariate-only control classifiers on the same
folds (and tests whether the CNN adds to the covariates), runs the optional
permutation test with retraining, derives any heatmap the participant level
did not, averages and scores them, and writes ``group.html``.
"""

from __future__ import annotations

import logging

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.cohort import load_cohort
from adheat_app.config import RunConfig
from adheat_app.errors import InputError
from adheat_app.inputs import log_input
from adheat_app.templates import get_template, parse_resolution

LOGGER = logging.getLogger(__name__)


def run(config: RunConfig, derivs: Derivatives, inputs: list[T1wInput]) -> int:
    """Run the group level; return the number of failed items (0: failures raise)."""
    from adheat_app.attribution.channel_ablation import run_channel_ablation
    from adheat_app.attribution.runner import run_heatmaps
    from adheat_app.attribution.sanity import sanity_check
    from adheat_app.baseline import run_covariates, run_nested_test, run_svm
    from adheat_app.evaluation import run_evaluation
    from adheat_app.evaluation.faithfulness import run_faithfulness
    from adheat_app.evaluation.twin_test import run_twin_test
    from adheat_app.report import write_group_report, write_subject_reports
    from adheat_app.training import run_training
    from adheat_app.training.folds import cohort_folds, with_cv
    from adheat_app.training.permutation import run_permutation_test

    cohort = load_cohort(config, derivs, inputs)
    log_input(config, cohort)
    config = with_cv(config, cohort)
    resolution = parse_resolution(cohort.res_label)
    if resolution != config.execution.resolution:
        LOGGER.info("using the preprocessed grid of %s mm (not --resolution %s)", resolution,
                    config.execution.resolution)
    template = get_template(resolution, space=cohort.space)
    if template.space != cohort.space:
        raise InputError(f"the images in {derivs.root} are in {cohort.space}, but that template is not available "
                         f"here (got {template.space}); pre-fetch it into $TEMPLATEFLOW_HOME")
    completed = run_training(config, derivs, cohort)
    if config.training.fold is not None:
        LOGGER.info("fold %d done; run 'group' without --fold to collect all folds", config.training.fold)
        return 0
    LOGGER.info("%d fold model(s) available", len(completed))
    folds = cohort_folds(config, cohort)
    run_svm(config, derivs, cohort, folds)
    run_covariates(config, derivs, folds)
    run_nested_test(config, derivs, folds)
    if config.training.permutation_test:
        run_permutation_test(config, derivs, cohort)
    run_heatmaps(config, derivs, cohort)
    for repeat in range(1, config.training.repeats):  # each repeat's out-of-fold maps, beside its fold models
        run_heatmaps(config, derivs, cohort, repeat)
    run_channel_ablation(config, derivs, cohort)
    if config.heatmaps.sanity_check:
        sanity_check(config, derivs, cohort)
    run_faithfulness(config, derivs, cohort)
    run_twin_test(config, derivs, cohort, template)
    run_evaluation(config, derivs, cohort, template)
    write_subject_reports(config, derivs, (s.subject for s in cohort.scans))
    write_group_report(config, derivs, cohort, template)
    return 0
