"""Reference kind ``simulation``: the planted ground truth of a simulated cohort, the headline when present.

``adheat-simulate`` writes the planted-atrophy map of the analysis grid under
``bids_dir/derivatives/simulation`` (:func:`~adheat_app.layout.simulation_truth_path`);
it is binarised at :data:`THRESHOLD`, the border of the planted regions, which
the simulator smooths by a Gaussian of sigma 3 mm. The cohort map is the mean
over the AD subjects of their own region maps, which the simulator writes too
(:func:`~adheat_app.layout.simulation_subject_map`, suffix ``probseg``);
:meth:`Simulation.load_subjects` reads them, binarised at the same threshold,
for the subject-level scores (:mod:`adheat_app.evaluation.subject_scores`).
"""

from __future__ import annotations

import logging

from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference, load_map, read_map
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind
from adheat_app.layout import simulation_root, simulation_subject_map, simulation_truth_path

LOGGER = logging.getLogger(__name__)

THRESHOLD = 0.5


class Simulation(ReferenceKind):
    """The simulated truth, when ``bids_dir`` holds one for the analysis grid."""

    name = "simulation"
    names = ("simulation",)
    order = 2
    headline = 0

    def load(self, context: Context) -> list[Reference]:
        template = context.template
        truth = simulation_truth_path(context.config.bids_dir, template.space, template.res_label)
        return [load_map(truth, template, self.name, THRESHOLD, "simulated truth")] if truth.is_file() else []

    def load_subjects(self, context: Context) -> dict[str, Reference]:
        """The region map of each subject of the cohort outside the negative class whose planted atrophy is not
        empty at :data:`THRESHOLD` (non-carriers have none)."""
        template, cohort = context.template, context.cohort
        root = simulation_root(context.config.bids_dir)
        subjects = sorted({s.subject for s in cohort.scans if s.diagnosis != cohort.negative_label})
        out = {}
        for subject in subjects:
            path = simulation_subject_map(root, subject, template.space, template.res_label, "probseg")
            if path.is_file():
                ref = read_map(path, template, self.name, THRESHOLD, "simulated subject truth")
                if ref.binary().any():
                    out[subject] = ref
        if out:
            LOGGER.info("simulated truth of %d of %d subject(s) outside %s (the others have none planted)",
                        len(out), len(subjects), cohort.negative_label)
        return out

    def methods_text(self, config: RunConfig) -> str:
        return ""


REFERENCES.register(Simulation.name)(Simulation())
