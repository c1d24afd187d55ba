"""Reference kind ``cohort``: where this cohort's classes differ, per input channel (:mod:`..cohort_reference`)."""

from __future__ import annotations

from adheat_app.config import RunConfig
from adheat_app.evaluation.cohort_reference import NAME, cohort_reference
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind


class CohortTest(ReferenceKind):
    """The class test of each input channel, covariate-adjusted, max-t FWE (``--n-permutations`` > 0).

    One map per input channel (``cohort``, or ``cohort<channel>`` with several);
    an uninformative one carries its reason and is reported, not scored.
    """

    name = NAME
    names = (NAME, f"{NAME}logjacobian", f"{NAME}intensity")
    order = 4
    headline = 1

    def load(self, context: Context) -> list[Reference]:
        return cohort_reference(context.config, context.derivs, context.cohort, context.template, context.compute)

    def methods_text(self, config: RunConfig) -> str:
        if config.evaluation.n_permutations <= 0:
            return ""
        covariates = ", ".join(c for c in config.training.covariates if c.lower() != "none") or "none"
        return ("A cohort reference was computed for each input channel as a voxel-wise general linear model of "
                f"the classifier's input (positive vs negative class, with the covariates {covariates} where "
                "present), family-wise error controlled by max-t over "
                f"{config.evaluation.n_permutations} permutations [@winkler2014permutation] (Nilearn); it comes "
                "from the same participants whose maps it scores, and a reference with fewer than 0.1 % of the "
                "brain voxels significant, or whose class was confounded with the covariates, was reported but "
                "not scored. ")


REFERENCES.register(NAME)(CohortTest())
