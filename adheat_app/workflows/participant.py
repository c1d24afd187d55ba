"""Participant level: T1w to template space, then per-subject heatmaps when trained models exist.

Each subject is independent, so a cohort scales out as one job per subject
(``--participant-label``). With trained models (``OUTPUT_DIR/models`` or
``--models``) the same run derives each subject's heatmaps with the model of
the fold that held it out, through the same code the group level uses.
"""

from __future__ import annotations

import logging

from adheat_app.bids import Derivatives, T1wInput
from adheat_app.config import RunConfig
from adheat_app.layout import trained_folds
from adheat_app.templates import get_template

LOGGER = logging.getLogger(__name__)


def trained_folds_exist(config: RunConfig) -> bool:
    """Whether at least one completed fold model of ``--model`` exists."""
    return bool(trained_folds(config.models_dir, config.training.model))


def run(config: RunConfig, derivs: Derivatives, inputs: list[T1wInput]) -> int:
    """Run the participant level; return the number of inputs that failed."""
    from adheat_app.preprocess import run_preprocessing
    from adheat_app.report import write_subject_reports

    template = get_template(config.execution.resolution)
    failed = set(run_preprocessing(config, inputs, derivs, template))
    done = [t for t in inputs if t.key not in failed]
    if done and trained_folds_exist(config):
        from adheat_app.attribution.runner import run_heatmaps
        from adheat_app.cohort import load_cohort

        LOGGER.info("trained %s models found in %s: deriving heatmaps", config.training.model, config.models_dir)
        run_heatmaps(config, derivs, load_cohort(config, derivs, done))
    write_subject_reports(config, derivs, (t.subject for t in done))
    return len(failed)
