"""Reference kind ``meta``: the ALE meta-analysis of the ``--reference-map`` foci (:mod:`..meta_analysis`)."""

from __future__ import annotations

from pathlib import Path

from adheat_app.config import RunConfig
from adheat_app.evaluation.meta_analysis import meta_reference
from adheat_app.evaluation.reference import Reference
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind
from adheat_app.layout import is_foci_file


class Meta(ReferenceKind):
    """NiMARE's ALE of a Sleuth ``.txt`` or foci ``.tsv``, cluster-level FWE unless a threshold is given."""

    name = "meta"
    names = ("meta",)
    order = 3
    headline = 2

    def load(self, context: Context) -> list[Reference]:
        ref = meta_reference(context.config, context.derivs, context.cohort, context.template, context.compute)
        return [ref] if ref is not None else []

    def methods_text(self, config: RunConfig) -> str:
        ref = config.evaluation.reference_map
        if not ref or not is_foci_file(ref):
            return ""
        return (f"The reference map was an activation likelihood estimation (ALE) meta-analysis "
                f"[@eickhoff2009ale; @eickhoff2012ale] of the foci in `{Path(ref).name}`, computed with NiMARE and "
                "thresholded at cluster-level family-wise error p < 0.05 (cluster-forming p < 0.001) unless a "
                "threshold was given. ")


REFERENCES.register(Meta.name)(Meta())
