"""Reference kind ``anatomicalprior``: the built-in region prior, always scored, never the headline.

The map shipped in ``adheat_app/data/`` (``ad_region_prior.nii.gz``, see
:func:`~adheat_app.evaluation.reference.builtin_reference_path`): the ALE
kernels of :func:`~adheat_app.evaluation.reference.ale_map` placed by
``adheat_app/data/make_reference_map.py`` at the AAL3 centroids of the regions
that VBM meta-analyses report as atrophic in AD. No coordinate comes from a
published study, so it is a prior on which regions to expect, not a
meta-analysis; its sidecar and the foci table beside it
(``ad_region_prior_foci.tsv``) say how it was made.
"""

from __future__ import annotations

from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference, builtin_reference_path, load_map
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind

DESCRIPTION = ("Region prior, not a meta-analysis: an ALE-style map of 20 foci placed at the AAL3 centroids "
               "of regions that VBM meta-analyses report as atrophic in AD (hippocampus, amygdala, "
               "parahippocampal gyrus, temporal cortex, posterior cingulate, precuneus, insula, thalamus). "
               "No coordinate comes from a published study.")


class AnatomicalPrior(ReferenceKind):
    """The built-in region prior, binarised at ``--reference-threshold`` only when no ``--reference-map`` is given."""

    name = "anatomicalprior"
    names = ("anatomicalprior",)
    order = 1
    headline = None
    caveat = "a region prior, not a meta-analysis"

    def load(self, context: Context) -> list[Reference]:
        ev = context.config.evaluation
        prior = load_map(builtin_reference_path(), context.template, self.name,
                         None if ev.reference_map else ev.reference_threshold, "built-in reference")
        return [Reference(prior.name, prior.values, prior.threshold, DESCRIPTION, prior.source)]

    def methods_text(self, config: RunConfig) -> str:
        return ("Scores against adheat's built-in region prior, an ALE-style map [@eickhoff2009ale; "
                "@eickhoff2012ale] of anatomically defined foci (AAL3 centroids of the regions that VBM "
                "meta-analyses report as atrophic in AD), are reported too; it is not a meta-analysis.")


REFERENCES.register(AnatomicalPrior.name)(AnatomicalPrior())
