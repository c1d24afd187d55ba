"""The two BIDS-App analysis levels, composed from the building blocks.

:func:`run_levels` (:mod:`.levels`) prepares the output dataset (description, run
configuration, logs) and runs the requested levels in order:
:mod:`.participant` (preprocessing, and heatmaps when trained models exist)
and :mod:`.group` (training, SVM baseline, out-of-fold heatmaps, evaluation,
report). Both levels end by rendering ``logs/CITATION.md`` for every step the
output dataset now contains.
"""

from adheat_app.workflows.levels import run_levels

__all__ = ["run_levels"]
