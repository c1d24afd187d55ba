"""Reference kind ``custom``: the user's ``--reference-map`` NIfTI (any map in MNI space, e.g. a published ALE).

Resampled linearly onto the analysis grid and binarised at
``--reference-threshold`` (default: the ``Threshold`` of its JSON sidecar when
it has one, else 0: voxels above 0, the convention of thresholded
meta-analysis maps); see :func:`~adheat_app.evaluation.reference.load_map`.
"""

from __future__ import annotations

from pathlib import Path

from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference, load_map
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind
from adheat_app.layout import is_foci_file


class Custom(ReferenceKind):
    """The ``--reference-map`` NIfTI (a foci file is kind ``meta`` instead)."""

    name = "custom"
    names = ("custom",)
    order = 0
    headline = 3

    def load(self, context: Context) -> list[Reference]:
        ev = context.config.evaluation
        if not ev.reference_map or is_foci_file(ev.reference_map):
            return []
        return [load_map(Path(ev.reference_map), context.template, self.name, ev.reference_threshold,
                         "--reference-map")]

    def methods_text(self, config: RunConfig) -> str:
        ref = config.evaluation.reference_map
        if not ref or is_foci_file(ref):
            return ""
        return f"The reference map was the user-supplied `{Path(ref).name}`. "


REFERENCES.register(Custom.name)(Custom())
