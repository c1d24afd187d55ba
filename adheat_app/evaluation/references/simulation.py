"""Reference kind ``simulation``: the planted ground truth of a simulated cohort, the headline when present.

``adheat-simulate`` writes the planted-atrophy map of the analysis grid under
``bids_dir/derivatives/simulation`` (:func:`~adheat_app.layout.simulation_truth_path`);
it is binarised at :data:`THRESHOLD`, the border of the planted regions, which
the simulator smooths by a Gaussian of sigma 3 mm.
"""

from __future__ import annotations

from adheat_app.config import RunConfig
from adheat_app.evaluation.reference import Reference, load_map
from adheat_app.evaluation.references import REFERENCES
from adheat_app.evaluation.references._contract import Context, ReferenceKind
from adheat_app.layout import simulation_truth_path

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

    def methods_text(self, config: RunConfig) -> str:
        return ""


REFERENCES.register(Simulation.name)(Simulation())
