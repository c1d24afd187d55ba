"""Reference kind ``cohort``: where this cohort's classes differ, voxel-wise (:mod:`..cohort_reference`)."""

from __future__ import annotations

import logging

from adheat_app.config import RunConfig
from adheat_app.evaluation.cohort_reference import NAME, cohort_reference
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind

LOGGER = logging.getLogger(__name__)


class CohortTest(ReferenceKind):
    """The two-sample test of the preprocessed images with max-t FWE correction (``--n-permutations`` > 0).

    When computing (the evaluation), a test with no FWE-significant voxel is
    logged and not returned; when only reading (the report), it is returned so
    the report shows it.
    """

    name = NAME
    names = (NAME,)
    order = 4
    headline = 1

    def load(self, context: Context) -> list[Reference]:
        ref = cohort_reference(context.config, context.derivs, context.cohort, context.template, context.compute)
        if ref is not None and context.compute and not ref.binary().any():
            LOGGER.info("cohort reference: no voxel survives FWE correction; not scored")
            return []
        return [ref] if ref is not None else []

    def methods_text(self, config: RunConfig) -> str:
        if config.evaluation.n_permutations <= 0:
            return ""
        return ("A cohort reference was computed as a voxel-wise two-sample t-test of the preprocessed images "
                f"(positive vs negative class), family-wise error controlled by max-t over "
                f"{config.evaluation.n_permutations} label permutations (Nilearn). ")


REFERENCES.register(NAME)(CohortTest())
