"""Group maps, reference maps, overlap scores, region and distance tables of the heatmaps and the SVM pattern."""

from adheat_app.evaluation.workflow import run_evaluation

__all__ = ["run_evaluation"]
