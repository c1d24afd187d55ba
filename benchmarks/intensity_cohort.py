"""Benchmark: the ranked methods on the defaults test's planted cohort, where the atrophy is an intensity signal.

The development cohort of ``tests/test_defaults.py`` (24 subjects at 4 mm,
the template as parent, atrophy planted as a darkening of 0.3 of the medial
and inferior temporal set's intensity, seed 3; template-space images written
directly, so the CNN reads intensities only) with the default training, and
every method of ``benchmarks/ranking.py`` (LRP with the composite
``epsilonplusflat``). Prints per method the relevance ratio of the mean
out-of-fold AD map (relevance per voxel inside the planted region over the
rest of the brain; 1 = none, the defaults test asks 3) and the answer's row for
the planted truth: the group map's ROC AUC with its interval over subjects
(chance 0.5), the strongest control, the paired difference to it with its
interval, and whether the map finds the truth. Complements the ranking, whose
cohorts plant a loss of tissue volume read mostly through the log Jacobian.
Not a test: the numbers depend on the cohort draw and the machine (5-10
minutes on 2 shared cores).

Set ``TEMPLATEFLOW_HOME`` to an offline TemplateFlow home holding
MNI152NLin2009cAsym (as the tests do); otherwise nilearn's 2009a template is
both parent and target.

Usage::

    python benchmarks/intensity_cohort.py OUTPUT_FOLDER
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_defaults  # noqa: E402  (the defaults test's cohort and run)

#: The methods of ``benchmarks/ranking.py``.
METHODS = ("IG", "Saliency", "SmoothGrad", "LRP", "GuidedBackprop", "GGC")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="empty folder for the cohort and its outputs")
    args = parser.parse_args(argv)
    test_defaults.METHODS = METHODS
    cohort_of_the_test = test_defaults.make_preprocessed_cohort

    def with_composite(*positional, **options):
        return cohort_of_the_test(*positional, heatmaps__lrp_rule="epsilonplusflat", **options)

    test_defaults.make_preprocessed_cohort = with_composite
    config, derivs, cohort, truth, table, ratios = test_defaults.default_run(args.output, null=False)
    answer, _ = test_defaults.evaluate(config, derivs, cohort, truth)
    print(f"CNN: balanced accuracy {table.loc['mean', 'balanced_accuracy']:.2f}, pooled ROC AUC "
          f"{table.loc['pooled', 'roc_auc']:.2f}")
    rows = answer[(answer["reference"] == "simulation") & (answer["sign"] == "absolute")].set_index("method")
    print("| method | relevance ratio | group ROC AUC [95 % CI] | strongest control | difference [95 % CI] | finds |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        row = rows.loc[method]
        print(f"| {method} | {ratios[method]:.2f} | {row['value']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] | "
              f"{row['control']} | {row['vs_control']:+.3f} [{row['vs_control_ci_low']:+.3f}, "
              f"{row['vs_control_ci_high']:+.3f}] | {'yes' if row['finds_reference'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
