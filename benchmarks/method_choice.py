"""Benchmark: SmoothGrad's noise level and sample count, and LRP's rules, against IG and Saliency (localisation).

A 16-subject simulated cohort (4 mm, darkening atrophy of effect 0.4 in the
medial temporal lobe, template-space images written directly, z-scored) and
the small CNN of the heatmap tests trained on every scan
(``tests/test_attribution.py::train_tiny``: full-batch, input noise, weight
decay; the maps are in-sample, so this compares methods on one model, not
generalisation). Every variant explains the AD scans' positive class; each
absolute map is scored against the planted truth (probability > 0.5) inside
the brain: ROC AUC (chance 0.5) and the relevance ratio (relevance per voxel
inside the region over the rest, 1 = none), each the mean over AD subjects with
a 95 % bootstrap interval over subjects; ``|input|`` is the trivial
competitor. Seconds per subject are printed too. Not a test: numbers depend on
the cohort draw and the machine.

Usage::

    python benchmarks/method_choice.py OUTPUT_FOLDER [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_preprocessed_cohort  # noqa: E402  (the tests' simulated cohort and model)
from test_attribution import context, train_tiny  # noqa: E402

from adheat_app.attribution import METHODS  # noqa: E402
from adheat_app.config import HeatmapOptions  # noqa: E402

BOOTSTRAP = 1000
#: (row label, method, heatmap options) of every variant scored.
VARIANTS = (
    ("IG", "IG", {}),
    ("Saliency", "Saliency", {}),
    *((f"SmoothGrad n=25 noise={level}", "SmoothGrad", {"smoothgrad_samples": 25, "smoothgrad_noise": level})
      for level in (0.05, 0.1, 0.15, 0.2, 0.3)),
    *((f"SmoothGrad n={n} noise=0.15", "SmoothGrad", {"smoothgrad_samples": n, "smoothgrad_noise": 0.15})
      for n in (10, 50)),
    *((f"LRP {rule}", "LRP", {"lrp_rule": rule}) for rule in ("alphabeta", "epsilonplusflat")),
)


def interval(values: np.ndarray) -> str:
    """Mean and 95 % bootstrap interval over subjects."""
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    return f"{values.mean():.3f} [{np.percentile(means, 2.5):.3f}, {np.percentile(means, 97.5):.3f}]"


def scores(maps: np.ndarray, brain: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map: ROC AUC of |map| in the brain against ``region`` and the relevance ratio."""
    absolute = np.abs(maps.reshape(len(maps), -1)[:, brain.ravel()])
    auc = np.array([roc_auc_score(region, m) for m in absolute])
    unit = absolute / absolute.sum(axis=1, keepdims=True)
    return auc, unit[:, region].mean(axis=1) / unit[:, ~region].mean(axis=1)


def main(argv: list[str] | None = None) -> int:
    """Simulate, train, print one row per variant."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    _, _, cohort, truth = make_preprocessed_cohort(args.output, n_subjects=16, seed=args.seed, effect_size=0.4,
                                                   preprocessing__intensity_norm="zscore")
    model, x, y = train_tiny(cohort, args.output / "work")
    print("training accuracy", float((model(x).argmax(1) == y).float().mean()), flush=True)
    ad = y == 1
    brain = truth.template.mask_array().astype(bool)
    region = truth.region[brain] > 0.5
    auc, ratio = scores(x[ad, 0].numpy(), brain, region)
    print(f"map\troc_auc\tratio\tseconds_per_subject\n|input|\t{interval(auc)}\t{interval(ratio)}\t-", flush=True)
    keys = [f"s{i}" for i in range(int(ad.sum()))]
    for label, name, options in VARIANTS:
        method = METHODS[name](HeatmapOptions(ig_steps=16, **options), context(batch=8))
        tic = time.perf_counter()
        maps = method.attribute(method.prepare(model, x[:1]), x[ad], y[ad], keys, template=x.mean(0)[0]).numpy()
        seconds = (time.perf_counter() - tic) / len(keys)
        auc, ratio = scores(maps, brain, region)
        print(f"{label}\t{interval(auc)}\t{interval(ratio)}\t{seconds:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
