"""Data randomisation (Adebayo et al. 2018): the methods' maps of models trained on permuted labels.

A map that explains what the model learned about the diagnosis must change
when the model is trained on labels that carry no information. With
``--sanity-check`` the group level trains a second set of fold models, the
same architecture and settings on the *same folds* (same training, validation
and test subjects), with the diagnoses permuted across subjects
(:func:`permuted_cohort`: one draw per run, seeded by ``--seed``; a subject's
sessions keep one label), under ``models/permutedlabels/<model>/fold-<k>``
(:func:`~adheat_app.layout.permuted_labels_models_dir`; reruns skip what is
trained). Every selected method then explains every scan by the permuted-label
model of its fold, exactly as it explains the trained one, and the maps are
written as ``desc-<Method>PermutedLabels`` (:class:`PermutedLabelsControl`):
controls the group evaluation scores like ``<Method>Random``. The cost is a
second training of every fold and one more map per method and scan.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from adheat_app.attribution.control_maps import ControlMethod
from adheat_app.bids import Derivatives
from adheat_app.cohort import Cohort
from adheat_app.config import RunConfig
from adheat_app.layout import PERMUTED_LABELS_SUFFIX, permuted_labels_models_dir
from adheat_app.training.permutation import permuted_cohort as permute_labels

LOGGER = logging.getLogger(__name__)

#: Added to the run seed for the label permutation (a stream of its own).
PERMUTATION_STREAM = 7919


def permuted_cohort(cohort: Cohort, seed: int) -> tuple[Cohort, float]:
    """``cohort`` with its labelled subjects' diagnoses permuted across subjects, and the share left unchanged.

    The permutation of the permutation test (:func:`adheat_app.training.permutation.permuted_cohort`: a subject's
    sessions share one label, unlabelled scans are kept), drawn from its own stream of ``seed``.
    """
    permuted = permute_labels(cohort, seed + PERMUTATION_STREAM)
    before = {scan.subject: scan.target for scan in cohort.labelled}
    after = {scan.subject: scan.target for scan in permuted.labelled}
    unchanged = float(np.mean([after[s] == label for s, label in before.items()])) if before else float("nan")
    return permuted, unchanged


class PermutedLabelsControl(ControlMethod):
    """A method's maps of the fold models trained on permuted labels (control ``<Method>PermutedLabels``).

    Parameters
    ----------
    method : Method
        The heatmap method, run unchanged on the permuted-label models.
    unchanged : float
        Share of subjects whose permuted label equals their diagnosis (recorded).
    """

    suffix = PERMUTED_LABELS_SUFFIX

    def __init__(self, method, unchanged: float):
        super().__init__(method)
        self.unchanged = unchanged

    def control(self) -> dict:
        """How the labels were permuted."""
        return {"Control": "model trained on permuted labels (same folds and settings)",
                "PermutationSeed": self.context.seed + PERMUTATION_STREAM,
                "LabelsUnchanged": round(self.unchanged, 4)}


def permuted_labels_config(config: RunConfig) -> RunConfig:
    """``config`` with its models folder moved to the permuted-label models."""
    return config.replace("heatmaps", models=str(permuted_labels_models_dir(config.models_dir)))


def run_data_randomisation(config: RunConfig, derivs: Derivatives, cohort: Cohort) -> None:
    """Train the permuted-label fold models on the real folds and write every method's control maps."""
    from adheat_app.attribution.runner import heatmap_run
    from adheat_app.training import run_training
    from adheat_app.training.folds import cohort_folds

    tr = config.training
    permuted, unchanged = permuted_cohort(cohort, config.execution.seed)
    relabelled = {s.key: s for s in permuted.scans}
    folds = [dataclasses.replace(fold, **{name: tuple(relabelled[s.key] for s in scans)
                                          for name, scans in fold.sets().items()})
             for fold in cohort_folds(config, cohort)]
    control = permuted_labels_config(config)
    LOGGER.info("data randomisation: training %s on permuted labels (%.0f %% of subjects keep theirs) in %s",
                tr.model, 100 * unchanged, control.models_dir)
    run_training(control, derivs, permuted, folds=folds, write_results=False)
    with heatmap_run(control, derivs, cohort) as run:
        for method in run.methods if run else ():
            run.run_method(PermutedLabelsControl(method, unchanged))
